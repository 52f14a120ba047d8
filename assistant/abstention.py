"""Decide whether the document answers the question, from signals measured in code.

Questions a document does not answer are usually written to look answerable: a name, number or
negation changed, a word the text never uses, or evidence whose best span the ranker barely
prefers. No single signal separates them, so a logistic gate fitted on hundreds of real questions
(`assistant fit`) combines them; the model's own likelihood is only one input. Free decoding has
no span scores, so it has its own gate over the evidence signals alone. Does not produce answers.
"""

import math
from collections.abc import Mapping

import numpy as np

from assistant.evidence import Window
from assistant.fitted import Linear
from assistant.lexicon import content_stems, vocabulary, words
from assistant.ranking import Candidate, Question, wanted_shown
from assistant.reading import Reading

NOT_IN_DOCUMENT = "The document does not say."

EVIDENCE_FEATURES = (
    "cosine", "coverage", "evidence_margin", "missing_document", "missing_window", "missing_weighted",
    "names_missing", "numbers_missing", "negation_unmatched",
)
GATE_FEATURES = (
    *EVIDENCE_FEATURES, "best", "margin", "share", "best_logprob_per_token", "best_pmi", "best_eot", "best_window",
    "best_coverage", "best_missing_weighted", "wanted_shown", "log_candidates",
)

READER_FEATURES = (
    *EVIDENCE_FEATURES, "reader_margin", "reader_window_margin", "reader_best", "reader_no_answer", "reader_rival",
    "reader_share", "reader_sentence_missing",
)

Signals = Mapping[str, float]


def evidence_signals(question: Question, windows: list[Window], weights: dict[str, float]) -> dict[str, float]:
    """What the evidence says about the question before any span is scored. `weights`: the
    document's content words, each with its inverse sentence frequency."""
    top = windows[0]
    found = content_stems(top.text)
    said = set(words(top.text))
    negations = set(vocabulary()["negations"])
    return {
        "cosine": top.cosine,
        "coverage": top.coverage,
        "evidence_margin": top.score - windows[1].score if len(windows) > 1 else top.score,
        "missing_document": _share_missing(question.stems, set(weights)),
        "missing_window": _share_missing(question.stems, found),
        "missing_weighted": _weighted_missing(question.stems, found, weights),
        "names_missing": _share_missing(question.names, found),
        "numbers_missing": _share_missing(question.numbers, said),
        "negation_unmatched": float(question.negated and not any(w in negations or w.endswith("n't") for w in said)),
    }


def answer_signals(question: Question, candidates: list[Candidate], logits: np.ndarray, best: int,
                   evidence: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    """The evidence signals, how convincing the chosen span is among the others, and whether its
    sentence holds the question's rarer words (`weights`: the document's, as in evidence_signals)."""
    chosen = candidates[best]
    span = chosen.span
    sentence = " ".join(x.text for x in chosen.window.sentences if x.overlaps(span))
    rivals = [x for i, x in enumerate(logits) if not candidates[i].span.overlaps(span)]
    top = float(logits[best])
    shares = np.exp(logits - top)
    s = chosen.scores
    return {
        **evidence,
        "best": top,
        "margin": top - max(rivals) if rivals else 10.0,
        "share": float(1 / shares.sum()),
        "best_logprob_per_token": s.logprob / (s.n_tokens + 1),
        "best_pmi": chosen.start.first - chosen.start.cf_first,
        "best_eot": s.eot,
        "best_window": float(chosen.window.rank),
        "best_coverage": chosen.window.coverage,
        "best_missing_weighted": _weighted_missing(question.stems, content_stems(sentence), weights),
        "wanted_shown": wanted_shown(question, chosen),
        "log_candidates": math.log(len(candidates)),
    }


def reader_signals(question: Question, reading: Reading, sentence: str, evidence: dict[str, float],
                   weights: dict[str, float]) -> dict[str, float]:
    """The evidence signals, the reader's case for its best span against "no answer" and against
    the best span elsewhere, and whether the sentence it sits in holds the question's rarer words."""
    best = reading.found[0]
    rivals = [f.score for f in reading.found[1:] if not f.span.overlaps(best.span)]
    scores = np.array([f.score for f in reading.found])
    return {
        **evidence,
        "reader_margin": reading.margin,
        "reader_window_margin": best.score - best.no_answer,
        "reader_best": best.score,
        "reader_no_answer": reading.no_answer,
        "reader_rival": best.score - max(rivals) if rivals else 10.0,
        "reader_share": float(1 / np.exp(scores - best.score).sum()),
        "reader_sentence_missing": _weighted_missing(question.stems, content_stems(sentence), weights),
    }


def p_answerable(gate: Linear, signals: Signals) -> float:
    logit = float(gate.logits(np.array([signals[f] for f in gate.features]))[0])
    return 1 / (1 + math.exp(-logit))


def _weighted_missing(wanted: frozenset[str], found: set[str], weights: dict[str, float]) -> float:
    """Like _share_missing, each word counted by its weight (a word the document never uses: the most)."""
    top = max(weights.values(), default=1.0) + 1
    total = sum(weights.get(w, top) for w in wanted)
    return sum(weights.get(w, top) for w in wanted - found) / total if total else 0.0


def _share_missing(wanted: frozenset[str] | set[str], found: set[str]) -> float:
    return len(wanted - found) / len(wanted) if wanted else 0.0
