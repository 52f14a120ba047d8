"""Choose the answer among the scored candidate spans with a fitted ranker.

A candidate is described by what the model measured (its likelihood given the question; how much
likelier its first token is after the question than after a content-free one), where it sits (which evidence window, how near the
question's own words), its length and form, and whether it is the kind of thing the question asks
for. The ranker's weights are fitted on real questions (`assistant fit`); nothing here is tuned to
a document. Does not call the model and does not decide whether to answer (abstention.py).
"""

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from assistant.evidence import Window
from assistant.extraction import SpanScores
from assistant.lexicon import STOPWORDS, content_stems, has_date, has_number, stem, vocabulary, words

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


SPAN_FEATURES = (
    "logprob", "logprob_rel", "logprob_per_token", "first", "cf_first", "pmi", "pmi_rel", "eot", "rest", "words",
    "log_tokens",
    "window0", "window1", "window2", "score_gap", "window_coverage", "window_cosine",
    "near", "adjacent", "question_share", "clause_start", "clause_end", "determiner",
    *(f"is_{p}" for p in PROPERTIES),
    *(f"{k}_{p}" for k in KINDS for p in PROPERTIES),
)


@dataclass(frozen=True)
class Candidate:
    window: Window
    scores: SpanScores

    @property
    def text(self) -> str:
        return self.window.text[self.scores.start : self.scores.end]

    @property
    def doc_start(self) -> int:
        return self.window.start + self.scores.start

    @property
    def doc_end(self) -> int:
        return self.window.start + self.scores.end


def span_features(question: Question, candidates: list[Candidate]) -> np.ndarray:
    """One row of SPAN_FEATURES per candidate; some are relative to the question's best candidate."""
    if not candidates:
        return np.zeros((0, len(SPAN_FEATURES)))
    best_lp = max(c.scores.logprob for c in candidates)
    best_pmi = max(c.scores.first - c.scores.cf_first for c in candidates)
    top_score = max(c.window.score for c in candidates)
    matches = {}
    rows = []
    for c in candidates:
        w, s = c.window, c.scores
        if w.rank not in matches:
            matches[w.rank] = _question_word_positions(w.text, question.stems)
        first, last = _word_range(w.text, s.start, s.end)
        distance = min((first - p if p < first else p - last + 1 for p in matches[w.rank] if not first <= p < last),
                       default=_FAR)
        span_words = words(c.text)
        span_stems = content_stems(c.text)
        props = span_properties(w.text, s.start, s.end)
        pmi = s.first - s.cf_first
        before, after = w.text[: s.start].rstrip(), w.text[s.end :].lstrip()
        row = {
            "logprob": s.logprob, "logprob_rel": s.logprob - best_lp, "logprob_per_token": s.logprob / (s.n_tokens + 1),
            "first": s.first, "cf_first": s.cf_first, "pmi": pmi, "pmi_rel": pmi - best_pmi, "eot": s.eot,
            "rest": s.logprob - s.first - s.eot,
            "words": len(span_words), "log_tokens": math.log(s.n_tokens),
            "window0": float(w.rank == 0), "window1": float(w.rank == 1), "window2": float(w.rank >= 2),
            "score_gap": top_score - w.score, "window_coverage": w.coverage, "window_cosine": w.cosine,
            "near": math.log1p(min(distance, _FAR)), "adjacent": float(distance <= 1),
            "question_share": len(span_stems & question.stems) / max(1, len(span_stems)),
            "clause_start": float(not before or before[-1] in ",;:(—–“\"."),
            "clause_end": float(not after or after[0] in ",;:).—–”\"!?"),
            "determiner": float(bool(span_words) and span_words[0] in ("the", "a", "an")),
            **{f"is_{p}": float(v) for p, v in props.items()},
            **{f"{k}_{p}": float(question.kind == k and v) for k in KINDS for p, v in props.items()},
        }
        rows.append([row[f] for f in SPAN_FEATURES])
    return np.array(rows, dtype=np.float64)


def _question_word_positions(text: str, stems: frozenset[str]) -> list[int]:
    return [i for i, m in enumerate(_WORD.finditer(text)) if stem(m.group().lower()) in stems]


def _word_range(text: str, start: int, end: int) -> tuple[int, int]:
    """Indices of the first word of text[start:end] and of the word after its last."""
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    inside = [i for i, (a, b) in enumerate(spans) if a < end and b > start]
    if not inside:
        return len(spans), len(spans)
    return inside[0], inside[-1] + 1


def wanted_shown(question: Question, candidate: Candidate) -> float:
    """1 when the span shows what the question's kind wants (or the kind wants nothing particular)."""
    wanted = WANTED.get(question.kind)
    if wanted is None:
        return 1.0
    return float(span_properties(candidate.window.text, candidate.scores.start, candidate.scores.end)[wanted])
