"""Measure candidate answers: exact spans of an evidence window, each scored by the language model.

Every span of 1..max_words words of the window is a candidate unless it adds nothing the question
lacks, ends on a dangling word or touches text that looks like a citation marker. The model scores
a candidate by the log-probability that, asked the question, it replies with exactly that span
and then ends its turn; and its first token after a content-free question ("What does the
passage say?"), which measures how likely the span opens whatever was asked (Holtzman et al.
2021, surface form competition). The windows are shown as one passage, so one prompt serves them
all. The first token of every start word is scored by the prompts alone; whole spans only from the
start words a fitted model ranks highest (ranking.py), since on two cores every token the model
reads costs ~5 ms.
Does not choose among the candidates (ranking.py) nor decide whether to answer (abstention.py).
"""

import re
from dataclasses import dataclass

from assistant.evidence import CITATION_LIKE
from assistant.generation import LocalLLM, Prompt
from assistant.lexicon import content_stems, words
from assistant.spans import Span

_LEAD = "“‘\"'([—–-"
_TRAIL = ",.;:!?”’\"')]—–-"


SEPARATOR = "\n"  # between the windows of one passage


@dataclass(frozen=True)
class Start:
    """A word a candidate span may start at, with what the prompts alone say of it."""

    window: int  # which of the passage's windows holds it
    offset: int  # into that window's text
    ends: tuple[int, ...]  # where allowed spans starting here end, also into the window's text
    first: float  # log P(its first token | passage, question)
    cf_first: float  # log P(its first token | passage, content-free question)


@dataclass(frozen=True)
class SpanScores:
    window: int
    start: int  # offsets into the window's text
    end: int
    n_tokens: int
    logprob: float  # log P(span, then end of turn | passage, question)
    eot: float  # the end-of-turn part of `logprob`


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


_DANGLING = frozenset(
    "a an the of to for with in on at by from as and or but that which who whose its their his her".split())


def allowed(spans: dict[int, list[int]], text: str, question: str) -> dict[int, list[int]]:
    """Only spans that add a content word the question lacks, do not end on a dangling word and
    do not touch anything that looks like a citation marker."""
    asked = content_stems(question)
    fake = [(m.start(), m.end()) for m in CITATION_LIKE.finditer(text)]
    kept = {
        s: [e for e in ends if content_stems(text[s:e]) - asked and words(text[s:e])[-1] not in _DANGLING
            and not any(a < e and s < b for a, b in fake)]
        for s, ends in spans.items()
    }
    return {s: ends for s, ends in kept.items() if ends}


def passage(texts: list[str]) -> str:
    return SEPARATOR.join(texts)


def find_starts(llm: LocalLLM, asked: Prompt, content_free: Prompt, texts: list[str], question: str,
                max_words: int) -> list[Start]:
    """Every start word of an allowed span in the windows `texts` (shown to the model as one
    passage), with its first token's log-probability after the question and after the
    content-free question: two prompt evaluations, nothing per start."""
    found = [(w, s, tuple(ends)) for w, text in enumerate(texts)
             for s, ends in allowed(candidate_spans(text, max_words), text, question).items()]
    if not found:
        return []
    tokens = [llm.tokens(texts[w][s : ends[-1]])[0] for w, s, ends in found]
    given_nothing = llm.first_token_logprobs(llm.prime(content_free)).copy()
    given_question = llm.first_token_logprobs(llm.prime(asked))
    return [Start(w, s, ends, float(given_question[t]), float(given_nothing[t]))
            for (w, s, ends), t in zip(found, tokens)]


def score_starts(llm: LocalLLM, asked: Prompt, texts: list[str], starts: list[Start]) -> list[list[SpanScores]]:
    """For each start, every allowed span from it scored after the question prompt: the model
    reads each start's longest span once, all of them side by side in one batch."""
    base = llm.prime(asked)
    pieces = [(texts[x.window][x.offset : x.ends[-1]], [e - x.offset for e in x.ends]) for x in starts]
    return [[SpanScores(x.window, x.offset, x.offset + s.end, s.n_tokens, s.logprob, s.eot) for s in scored]
            for x, scored in zip(starts, llm.score_many(base, pieces))]


def span_contexts(spans: list[Span], sentences: list[Span]) -> tuple[list[str], list[Start]]:
    """The sentences holding each span, joined where a span crosses them, as texts a prompt shows,
    and each span as a Start in them (one end): what `score_starts` scores."""
    contexts: list[Span] = []
    starts = []
    for span in spans:
        holding = [s for s in sentences if s.overlaps(span)]
        if not holding:
            continue
        whole = Span(span.doc_id, holding[0].start, holding[-1].end,
                     "".join(s.text if i == 0 else " " * (s.start - holding[i - 1].end) + s.text
                             for i, s in enumerate(holding)))
        if whole not in contexts:
            contexts.append(whole)
        n = contexts.index(whole)
        starts.append(Start(n, span.start - whole.start, (span.end - whole.start,), 0.0, 0.0))
    return [c.text for c in contexts], starts
