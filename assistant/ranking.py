"""Choose the answer among the scored candidate spans with a fitted ranker.

A candidate is described by what the model measured (its likelihood given the question; how much
likelier its first token is after the question than after a content-free one), where it sits
(which evidence window, how near the question's own words), its length and form, and whether it
is the kind of thing the question asks for. The ranker's weights are fitted on real questions
(`assistant fit`); nothing here is tuned to a document. Does not call the model and does not
decide whether to answer (abstention.py).
"""

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from assistant.evidence import Window
from assistant.extraction import SpanScores, Start
from assistant.lexicon import STOPWORDS, content_stems, has_date, has_number, stem, vocabulary, words
from assistant.spans import Span

KINDS = ("person", "date", "number", "place", "organisation", "reason", "manner", "other")
PROPERTIES = ("number", "date", "name", "lower")
# What a question of each kind wants its answer to show; kinds not listed want nothing in particular.
WANTED = {"person": "name", "date": "date", "number": "number", "place": "name", "organisation": "name"}
_WORD = re.compile(r"[^\W_]+(?:[’'][^\W_]+)*")
_FAR = 20  # words: a span this far from every question word is as far as it gets
_FILLERS = frozenset("kind type sort name form part group".split())


@lru_cache(maxsize=1)
def _noun_kinds() -> dict[str, str]:
    return {stem(noun): kind for kind, nouns in vocabulary()["nouns"].items() for noun in nouns if " " not in noun}


@dataclass(frozen=True)
class Question:
    text: str
    kind: str  # one of KINDS
    stems: frozenset[str]  # content words
    names: frozenset[str]  # stems of its capitalised words other than the first
    numbers: frozenset[str]
    negated: bool


def read_question(text: str) -> Question:
    """'In what year did the war end?' -> kind 'date'; 'Who led the army?' -> 'person'."""
    raw = _WORD.findall(text)
    names = frozenset(stem(w.lower()) for w in raw[1:] if w[:1].isupper() and w.lower() not in STOPWORDS)
    lowered = words(text)
    negations = set(vocabulary()["negations"])
    negated = any(w in negations or w.endswith("n't") for w in lowered)
    return Question(text, question_kind(lowered), frozenset(content_stems(text)), names,
                    frozenset(w for w in lowered if has_number(w)), negated)


def question_kind(lowered: list[str]) -> str:
    """The kind of answer asked for, from the first question word and the noun after 'what'/'which'."""
    phrases = vocabulary()["phrases"]
    for i, w in enumerate(lowered):
        if w in ("what", "which"):
            for noun in (x for x in lowered[i + 1 : i + 5] if x not in STOPWORDS and x not in _FILLERS):
                return _noun_kinds().get(stem(noun), "other")
            return "other"
        if w in phrases or w == "how":
            pair = " ".join(lowered[i : i + 2])
            return phrases.get(pair) or phrases.get(w) or "other"
    return "other"


def span_properties(window: str, start: int, end: int) -> dict[str, bool]:
    """What a span shows: a number, a date, a proper name (a capital that does not just open a
    sentence), or nothing capitalised at all."""
    span = window[start:end]
    capitals = [m for m in _WORD.finditer(span) if m.group()[:1].isupper()]
    opener = start == 0 or bool(re.search(r"[.!?:;“\"(]\s*$", window[:start]))
    proper = [m for m in capitals if not (m.start() == 0 and opener) and m.group().lower() not in STOPWORDS]
    return {"number": has_number(span), "date": has_date(span), "name": bool(proper), "lower": not capitals}


_PROPERTY_FEATURES = (*(f"is_{p}" for p in PROPERTIES), *(f"{k}_{p}" for k in KINDS for p in PROPERTIES))
START_FEATURES = (
    "first", "first_rel", "cf_first", "pmi", "pmi_rel", "window0", "window1", "window2", "score_gap",
    "window_coverage", "window_cosine", "near", "adjacent", "after_question_word", "question_word", "clause_start",
    "determiner", "position", *_PROPERTY_FEATURES,
)
SPAN_FEATURES = (
    "start_score", "start_score_rel", "logprob", "logprob_rel", "logprob_per_token", "eot", "rest", "words",
    "log_tokens", "near", "question_share", "clause_end", *_PROPERTY_FEATURES,
)


@dataclass(frozen=True)
class Candidate:
    window: Window
    start: Start
    scores: SpanScores

    @property
    def text(self) -> str:
        return self.window.text[self.scores.start : self.scores.end]

    @property
    def span(self) -> Span:
        """Where the candidate is in its document."""
        w = self.window
        return Span(w.doc_id, w.start + self.scores.start, w.start + self.scores.end, self.text)


class _Layout:
    """A window's words and which of them the question uses."""

    def __init__(self, text: str, stems: frozenset[str]) -> None:
        found = list(_WORD.finditer(text))
        self.bounds = [(m.start(), m.end()) for m in found]
        self.asked = [stem(m.group().lower()) in stems for m in found]

    def words_of(self, start: int, end: int) -> tuple[int, int]:
        """Indices of the first word of [start, end) and of the word after its last."""
        inside = [i for i, (a, b) in enumerate(self.bounds) if a < end and b > start]
        return (inside[0], inside[-1] + 1) if inside else (len(self.bounds), len(self.bounds))

    def distance(self, first: int, last: int) -> int:
        """Words between [first, last) and the nearest question word outside it."""
        gaps = [first - i if i < first else i - last + 1 for i, asked in enumerate(self.asked)
                if asked and not first <= i < last]
        return min(gaps, default=_FAR)


def start_features(question: Question, windows: list[Window], starts: list[Start]) -> np.ndarray:
    """One row of START_FEATURES per start word: what can be said before any span is scored."""
    if not starts:
        return np.zeros((0, len(START_FEATURES)))
    layouts = {w.rank: _Layout(w.text, question.stems) for w in windows}
    best_first = max(x.first for x in starts)
    best_pmi = max(x.first - x.cf_first for x in starts)
    top_score = windows[0].score
    rows = []
    for x in starts:
        w, layout = windows[x.window], layouts[x.window]
        first, _ = layout.words_of(x.offset, x.ends[0])
        distance = layout.distance(first, first + 1)
        pmi = x.first - x.cf_first
        before = w.text[: x.offset].rstrip()
        word = w.text[x.offset : x.ends[0]]
        row = {
            "first": x.first, "first_rel": x.first - best_first, "cf_first": x.cf_first, "pmi": pmi,
            "pmi_rel": pmi - best_pmi, "window0": float(w.rank == 0), "window1": float(w.rank == 1),
            "window2": float(w.rank >= 2), "score_gap": top_score - w.score, "window_coverage": w.coverage,
            "window_cosine": w.cosine, "near": math.log1p(min(distance, _FAR)), "adjacent": float(distance <= 1),
            "after_question_word": float(first > 0 and layout.asked[first - 1]),
            "question_word": float(first < len(layout.asked) and layout.asked[first]),
            "clause_start": float(not before or before[-1] in ",;:(—–“\"."),
            "determiner": float(words(word)[:1] in (["the"], ["a"], ["an"])),
            "position": first / max(1, len(layout.bounds)),
            **_property_row(question, w.text, x.offset, x.ends[0]),
        }
        rows.append([row[f] for f in START_FEATURES])
    return np.array(rows, dtype=np.float64)


def span_features(question: Question, candidates: list[Candidate], start_scores: np.ndarray) -> np.ndarray:
    """One row of SPAN_FEATURES per candidate; `start_scores` are the start ranker's logits of their starts."""
    if not candidates:
        return np.zeros((0, len(SPAN_FEATURES)))
    best_lp = max(c.scores.logprob for c in candidates)
    best_start = float(np.max(start_scores))
    layouts: dict[int, _Layout] = {}
    rows = []
    for c, start_score in zip(candidates, start_scores):
        w, s = c.window, c.scores
        layout = layouts.setdefault(w.rank, _Layout(w.text, question.stems))
        distance = layout.distance(*layout.words_of(s.start, s.end))
        span_stems = content_stems(c.text)
        after = w.text[s.end :].lstrip()
        row = {
            "start_score": float(start_score), "start_score_rel": float(start_score) - best_start,
            "logprob": s.logprob, "logprob_rel": s.logprob - best_lp, "logprob_per_token": s.logprob / (s.n_tokens + 1),
            "eot": s.eot, "rest": s.logprob - c.start.first - s.eot, "words": len(words(c.text)),
            "log_tokens": math.log(s.n_tokens), "near": math.log1p(min(distance, _FAR)),
            "question_share": len(span_stems & question.stems) / max(1, len(span_stems)),
            "clause_end": float(not after or after[0] in ",;:).—–”\"!?"),
            **_property_row(question, w.text, s.start, s.end),
        }
        rows.append([row[f] for f in SPAN_FEATURES])
    return np.array(rows, dtype=np.float64)


def _property_row(question: Question, text: str, start: int, end: int) -> dict[str, float]:
    props = span_properties(text, start, end)
    return {**{f"is_{p}": float(v) for p, v in props.items()},
            **{f"{k}_{p}": float(question.kind == k and v) for k in KINDS for p, v in props.items()}}


def wanted_shown(question: Question, candidate: Candidate) -> float:
    """1 when the span shows what the question's kind wants (or the kind wants nothing particular)."""
    wanted = WANTED.get(question.kind)
    if wanted is None:
        return 1.0
    return float(span_properties(candidate.window.text, candidate.scores.start, candidate.scores.end)[wanted])
