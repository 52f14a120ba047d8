"""Measure candidate answers: exact spans of an evidence window, each scored by the language model.

Every span of 1..max_words words of the window is a candidate unless it adds nothing the question
lacks, ends on a dangling word or touches text that looks like a citation marker. The model scores
a candidate by the log-probability that, asked the question, it replies with exactly that span
and then ends its turn; and its first token after a content-free question ("What does the
passage say?"), which measures how likely the span opens whatever was asked (Holtzman et al.
2021, surface form competition). The windows are shown as one passage, so one prompt serves them
all, and only the continuations of the `max_starts` start words whose first token the model finds
likeliest are scored: on two cores every token the model reads costs ~5 ms.
Does not choose among the candidates (ranking.py) nor decide whether to answer (abstention.py).
"""

import re
from dataclasses import dataclass

from assistant.generation import LocalLLM, Prompt
from assistant.lexicon import content_stems, words

_LEAD = "“‘\"'([—–-"
_TRAIL = ",.;:!?”’\"')]—–-"


SEPARATOR = "\n"  # between the windows of one passage


@dataclass(frozen=True)
class SpanScores:
    window: int  # which of the passage's windows holds the span
    start: int  # offsets into that window's text
    end: int
    n_tokens: int
    logprob: float  # log P(span, then end of turn | passage, question)
    eot: float  # the end-of-turn part of `logprob`
    first: float  # the first token's part of `logprob`
    cf_first: float  # log P(the span's first token | passage, content-free question)


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


# What a document may carry that looks like a citation: "[3]", "[1, 2]", "[source: 0:10]". Never an answer.
_CITATION_LIKE = re.compile(r"\[\s*(?:\d+(?:\s*[,-]\s*\d+)*|source\b[^\]]{0,80})\s*\]", re.IGNORECASE)
_DANGLING = frozenset("a an the of to for with in on at by from as and or but that which who whose its their his her".split())


def allowed(spans: dict[int, list[int]], text: str, question: str) -> dict[int, list[int]]:
    """Only spans that add a content word the question lacks, do not end on a dangling word and
    do not touch anything that looks like a citation marker."""
    asked = content_stems(question)
    fake = [(m.start(), m.end()) for m in _CITATION_LIKE.finditer(text)]
    kept = {
        s: [e for e in ends if content_stems(text[s:e]) - asked and words(text[s:e])[-1] not in _DANGLING
            and not any(a < e and s < b for a, b in fake)]
        for s, ends in spans.items()
    }
    return {s: ends for s, ends in kept.items() if ends}


def passage(texts: list[str]) -> str:
    return SEPARATOR.join(texts)


def score_spans(llm: LocalLLM, asked: Prompt, content_free: Prompt, texts: list[str], question: str,
                max_words: int, max_starts: int) -> list[SpanScores]:
    """Every allowed span of the windows `texts` (shown to the model as one passage, joined by
    SEPARATOR) that starts at one of the `max_starts` likeliest start words, with its scores.
    `asked` and `content_free` are the prompts over that passage, ending with the question and
    with the content-free one."""
    offsets, spans = [], {}
    at = 0
    for i, text in enumerate(texts):
        for s, ends in allowed(candidate_spans(text, max_words), text, question).items():
            spans[at + s] = [at + e for e in ends]
        offsets.append(at)
        at += len(text) + len(SEPARATOR)
    if not spans:
        return []
    joined = passage(texts)
    first_token = {s: llm.tokens(joined[s : ends[-1]])[0] for s, ends in spans.items()}
    given_nothing = llm.first_token_logprobs(llm.prime(content_free)).copy()
    base = llm.prime(asked)
    first = llm.first_token_logprobs(base)
    starts = sorted(spans, key=lambda s: -float(first[first_token[s]]))[: max_starts or None]
    pieces = [(joined[s : spans[s][-1]], [e - s for e in spans[s]]) for s in starts]
    out = []
    for start, scored in zip(starts, llm.score_many(base, pieces)):
        window = max(i for i, o in enumerate(offsets) if o <= start)
        shift = offsets[window]
        out.extend(SpanScores(window, start - shift, start + x.end - shift, x.n_tokens, x.logprob, x.eot,
                              float(first[first_token[start]]), float(given_nothing[first_token[start]]))
                   for x in scored)
    return out
