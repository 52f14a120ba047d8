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

from assistant.generation import LocalLLM
from assistant.lexicon import content_stems, has_date, has_name, has_number

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


def answer_type(question: str) -> Callable[[str], bool] | None:
    """'How many troops...' -> has_number; 'When did...' -> has_date; 'Who said...' -> has_name."""
    q = question.lower().strip()
    if re.search(r"\bhow (many|much)\b|\bwhat (number|percentage|share|amount)\b", q):
        return has_number
    if re.match(r"(\w+ )?when\b", q) or re.search(r"\b(what|which|on what|in what) (date|day|month|year)\b", q):
        return has_date
    if re.match(r"(\w+ )?(who|whom|whose)\b", q) or re.search(r"\bwhich (person|official|leader)\b", q):
        return has_name
    return None


def candidate_spans(text: str, max_words: int) -> dict[int, list[int]]:
    """Start offset -> end offsets of every 1..max_words word span, trimmed of outer punctuation.

    'He said “no.”' -> {0: [2, 7, 12], 3: [7, 12], 9: [11]}"""
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


def extract(llm: LocalLLM, prompt: str, evidence: str, question: str, max_words: int) -> Extract | None:
    """The best span of `evidence` under the rules; None when the evidence has no usable span."""
    spans = _allowed(candidate_spans(evidence, max_words), evidence, question)
    wanted = answer_type(question)
    typed = {s: [e for e in ends if wanted(evidence[s:e])] for s, ends in spans.items()} if wanted else {}
    typed = {s: ends for s, ends in typed.items() if ends}
    base = llm.prime(prompt)
    best = _search(llm, base, evidence, typed or spans)
    if best is None:
        return None
    return Extract(best[1], best[2], evidence[best[1] : best[2]], best[0], best[3], bool(typed) or wanted is None)


def _allowed(spans: dict[int, list[int]], evidence: str, question: str) -> dict[int, list[int]]:
    """Only spans that add a content word the question does not already contain."""
    asked = content_stems(question)
    kept = {s: [e for e in ends if content_stems(evidence[s:e]) - asked] for s, ends in spans.items()}
    return {s: ends for s, ends in kept.items() if ends}


def _search(llm: LocalLLM, base: int, evidence: str, spans: dict[int, list[int]]) -> tuple[float, int, int, int] | None:
    first = llm.first_token_logprobs(base)
    bounds = sorted(((float(first[llm.tokens(evidence[s:ends[-1]])[0]]), s) for s, ends in spans.items()), reverse=True)
    best: tuple[float, int, int, int] | None = None
    for bound, start in bounds:
        if best is not None and bound < best[0]:
            break
        ends = [e - start for e in spans[start]]
        for scored in llm.score_continuations(base, evidence[start : start + ends[-1]], ends):
            if best is None or scored.logprob > best[0]:
                best = (scored.logprob, start, start + scored.end, scored.n_tokens)
    return best
