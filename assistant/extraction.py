"""Extract the answer as an exact span of the evidence, chosen by the language model's likelihood.

Every span of 1..max_words words of the evidence is a candidate; its score is the log-probability
that the model, asked the question, replies with exactly that span and then ends its turn. The
search is exact but prunes: a span can score no better than its first token, so starts are visited
best-first and the search stops once no start can beat the best span found.
Does not decide whether to answer at all (see abstention.py).
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

from assistant.generation import LocalLLM, Prompt
from assistant.lexicon import SPEECH_VERBS, attributed, content_stems, has_date, has_name, has_number, stem, words

_LEAD = "“‘\"'([—–-"
_TRAIL = ",.;:!?”’\"')]—–-"


@dataclass(frozen=True)
class Extract:
    start: int  # offsets into the evidence text
    end: int
    text: str
    logprob: float
    n_tokens: int
    typed: bool  # the span has the kind of thing the question asks for (number, date, name)


Check = Callable[[str, int, int], bool]  # (evidence, start, end) -> does the span fit the question


def _on_span(test: Callable[[str], bool]) -> Check:
    return lambda text, start, end: test(text[start:end])


def _speaker(text: str, start: int, end: int) -> bool:
    return attributed(text, start, end) and (has_name(text[start:end]) or not text[start:start + 1].isupper())


def _counting(noun: str) -> Check:
    """'How many troops...': a number that counts troops, the noun within three words after it."""
    target = stem(noun)

    def check(text: str, start: int, end: int) -> bool:
        after = words(text[start:end]) + words(text[end : end + 40])
        return has_number(text[start:end]) and any(
            has_number(w) and target in {stem(x) for x in after[i + 1 : i + 4]} for i, w in enumerate(after)
        )

    return check


def answer_type(question: str) -> Check | None:
    """'How many troops...' -> a number; 'When did...' -> a date; 'Who said...' -> whoever a quote
    is attributed to; 'Who did...' -> a name. 'Who is Dmitry Peskov?' asks for a role: no type."""
    q = question.lower().strip()
    counted = re.search(r"\bhow many ((?:[\w-]+ ){0,2}?[\w-]+?s)\b", q)
    if counted:
        return _counting(counted.group(1).split()[-1])
    if re.search(r"\bhow (many|much|long|far|old)\b|\bwhat (number|percentage|share|amount)\b", q):
        return _on_span(has_number)
    if re.match(r"(\w+ )?when\b", q) or re.search(r"\b(what|which|on what|in what) (date|day|month|year)\b", q):
        return _on_span(has_date)
    if re.match(r"(?i:who (is|was|are|were)) [A-Z][\w.’' -]*\??$", question.strip()):
        return None
    if re.match(r"(\w+ )?(who|whom|whose)\b", q):
        return _speaker if SPEECH_VERBS & set(words(q)) else _on_span(has_name)
    if re.search(r"\b(which|what) (\w+ )?(organi[sz]ation|body|agency|company|publication|newspaper|magazine|"
                 r"platform|network|city|country|place|square|institution|think tank|leader|official|person)\b", q):
        return _on_span(has_name)
    return None


def candidate_spans(text: str, max_words: int) -> dict[int, list[int]]:
    """Start offset -> end offsets of every 1..max_words word span, trimmed of outer punctuation.

    'He said “no.”' -> {0: [2, 7, 11], 3: [7, 11], 9: [11]}"""
    tokens = list(re.finditer(r"\S+", text))
    spans: dict[int, list[int]] = {}
    for i, first in enumerate(tokens):
        start = first.start() + len(first.group()) - len(first.group().lstrip(_LEAD))
        ends = []
        for last in tokens[i : i + max_words]:
            end = last.start() + len(last.group().rstrip(_TRAIL))
            if end > start and end not in ends:
                ends.append(end)
        if ends:
            spans[start] = ends
    return spans


def extract(llm: LocalLLM, prompt: Prompt, evidence: str, question: str, max_words: int,
            max_starts: int = 0) -> Extract | None:
    """The best span of `evidence` under the rules; None when the evidence has no usable span."""
    spans = _allowed(candidate_spans(evidence, max_words), evidence, question)
    wanted = answer_type(question)
    typed = {s: [e for e in ends if wanted(evidence, s, e)] for s, ends in spans.items()} if wanted else {}
    typed = {s: ends for s, ends in typed.items() if ends}
    base = llm.prime(prompt)
    best = _search(llm, base, evidence, typed or spans, max_starts)
    if best is None:
        return None
    return Extract(best[1], best[2], evidence[best[1] : best[2]], best[0], best[3], bool(typed) or wanted is None)


# What a document may carry that looks like a citation: "[3]", "[1, 2]", "[source: 0:10]". Never an answer.
_CITATION_LIKE = re.compile(r"\[\s*(?:\d+(?:\s*[,-]\s*\d+)*|source\b[^\]]{0,80})\s*\]", re.IGNORECASE)
_DANGLING = frozenset("a an the of to for with in on at by from as and or but that which who whose its their his her".split())


def _allowed(spans: dict[int, list[int]], evidence: str, question: str) -> dict[int, list[int]]:
    """Only spans that add a content word the question lacks, do not end on a dangling word and
    do not touch anything that looks like a citation marker."""
    asked = content_stems(question)
    fake = [(m.start(), m.end()) for m in _CITATION_LIKE.finditer(evidence)]
    kept = {
        s: [e for e in ends if content_stems(evidence[s:e]) - asked and words(evidence[s:e])[-1] not in _DANGLING
            and not any(a < e and s < b for a, b in fake)]
        for s, ends in spans.items()
    }
    return {s: ends for s, ends in kept.items() if ends}


def _search(llm: LocalLLM, base: int, evidence: str, spans: dict[int, list[int]],
            max_starts: int = 0) -> tuple[float, int, int, int] | None:
    first = llm.first_token_logprobs(base)
    bounds = sorted(((float(first[llm.tokens(evidence[s:ends[-1]])[0]]), s) for s, ends in spans.items()), reverse=True)
    best: tuple[float, int, int, int] | None = None
    for bound, start in bounds[: max_starts or None]:
        if best is not None and bound < best[0]:
            break
        ends = [e - start for e in spans[start]]
        for scored in llm.score_continuations(base, evidence[start : start + ends[-1]], ends):
            if best is None or scored.logprob > best[0]:
                best = (scored.logprob, start, start + scored.end, scored.n_tokens)
    return best
