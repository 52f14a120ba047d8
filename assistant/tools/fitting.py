"""Fit the span ranker and the abstention gates on real questions (`assistant fit`).

Every question is measured once through the real pipeline (retrieval, evidence windows, the
model's scores of every candidate span); the scores are remembered on disk, so a refit costs
seconds. The ranker learns which candidate is an accepted answer; the gates learn whether the
document answers the question at all, from the features of the span the ranker would choose. Both
are judged by cross-validation across documents, so no number reported here comes from a document
the weights were fitted on. Uses scikit-learn; the result is plain weights (fitted.py).
"""

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assistant.abstention import EVIDENCE_FEATURES, GATE_FEATURES, READER_FEATURES, answer_signals
from assistant.answering import Assistant, Measured
from assistant.errors import AssistantError
from assistant.fitted import Fitted, FittedWith, Linear, ReaderGate, file_sha256
from assistant.ranking import SPAN_FEATURES, START_FEATURES, span_features
from assistant.tools.evaluation import Item, QuestionSet, fold

FOLDS = 5
GATE_C = 0.1  # stronger regularisation than the rankers': signals shift from one document to the next
EXTRA_WORDS = 3  # a span is right when it holds an accepted answer and at most this many more words


@dataclass(frozen=True)
class Example:
    item: Item
    group: str  # the document, for cross-validation across documents
    measured: Measured
    features: np.ndarray  # span features: one row per candidate, or start features: one row per start
    right: np.ndarray  # per row: a candidate that holds an accepted answer, or a start of one


def right_span(text: str, answers: tuple[str, ...]) -> bool:
    """'the Edict of Nantes in 1598' holds 'Edict of Nantes' (within EXTRA_WORDS more words)."""
    folded = fold(text)
    return any(f" {fold(a)} " in f" {folded} " and len(folded.split()) <= len(fold(a).split()) + EXTRA_WORDS
               for a in answers if fold(a))


def measure(assistants: list[Assistant], sets: list[QuestionSet], chosen: list[list[Item]],
            progress: Callable[[str, int, int], None]) -> tuple[list[Example], Linear, list[Example]]:
    """Every question's start words, the start ranker fitted on them, then every question's
    candidate spans from the starts it ranks highest."""
    total, done = sum(map(len, chosen)), [0, 0]

    def counter(stage: int, what: str) -> Callable[[], None]:
        def advance() -> None:
            done[stage] += 1
            progress(what, done[stage], total)
        return advance

    measured = list(zip(assistants, sets, chosen))
    starts = [e for a, q, items in measured
              for e in measure_starts(a, q, items, counter(0, f"Start words of {total} questions"))]
    starter = fit_ranker(starts, START_FEATURES)
    examples = [e for a, q, items in measured
                for e in measure_spans(a, q, items, starter, counter(1, f"Spans of {total} questions"))]
    return starts, starter, examples


def save(fitted: Fitted | ReaderGate, target: Path) -> None:
    """Write the fitted file whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".tmp")
    temporary.write_text(fitted.model_dump_json(indent=2) + "\n", encoding="utf-8")
    temporary.replace(target)


def measure_starts(assistant: Assistant, qset: QuestionSet, items: list[Item],
                   tick: Callable[[], None] = lambda: None) -> list[Example]:
    """Each question's start words (the prompts only), labelled by whether a right span starts there."""
    out = []
    for item in items:
        measured = assistant.measure(item.question, item.doc_id, spans=False)
        windows = measured.windows
        right = np.array([item.answerable and any(right_span(windows[x.window].text[x.offset : e], item.answers)
                                                  for e in x.ends) for x in measured.spans.starts], dtype=bool)
        out.append(Example(item, item.doc_id or qset.name, measured, measured.spans.start_features, right))
        tick()
    return out


def measure_spans(assistant: Assistant, qset: QuestionSet, items: list[Item], starter: Linear,
                  tick: Callable[[], None] = lambda: None) -> list[Example]:
    """Each question's candidate spans from the start words `starter` ranks highest, labelled."""
    out = []
    for item in items:
        measured = assistant.measure(item.question, item.doc_id, starter=starter)
        candidates = list(measured.spans.candidates)
        right = np.array([item.answerable and right_span(c.text, item.answers) for c in candidates], dtype=bool)
        features = span_features(measured.asked, candidates, measured.spans.start_scores)
        out.append(Example(item, item.doc_id or qset.name, measured, features, right))
        tick()
    return out


def sample(items: list[Item], limit: int | None, per_set: bool = False, seed: int = 0) -> list[Item]:
    """At most `limit` items of each document (`per_set`: of all, shared evenly among the
    documents), drawn at random but the same every time, in file order."""
    if limit is None or (per_set and len(items) <= limit):
        return items
    docs = sorted({i.doc_id or "" for i in items})
    rng = np.random.default_rng(seed)
    keep = set()
    for n, doc in enumerate(docs):
        mine = [k for k, i in enumerate(items) if (i.doc_id or "") == doc]
        share = limit // len(docs) + (n < limit % len(docs)) if per_set else limit
        keep.update(rng.choice(mine, size=min(share, len(mine)), replace=False).tolist())
    return [items[k] for k in sorted(keep)]


def fit_linear(x: np.ndarray, y: np.ndarray, features: tuple[str, ...], c: float = 1.0) -> Linear:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    model = LogisticRegression(C=c, max_iter=5000).fit((x - scaler.mean_) / scale, y)
    return Linear(features=features, weights=tuple(model.coef_[0].tolist()), bias=float(model.intercept_[0]),
                  mean=tuple(scaler.mean_.tolist()), scale=tuple(scale.tolist()))


def fit_ranker(examples: list[Example], features: tuple[str, ...] = SPAN_FEATURES) -> Linear:
    """Pointwise: the rows of answerable questions that have a right one, right vs the rest."""
    usable = [e for e in examples if e.right.any()]
    if not usable or all(e.right.all() for e in usable):
        raise AssistantError("no question to fit a ranker on has both a right and a wrong candidate; "
                             "give more answerable questions")
    x = np.vstack([e.features for e in usable])
    y = np.concatenate([e.right for e in usable])
    return fit_linear(x, y, features)


def start_recall(examples: list[Example], top: int) -> float:
    """Share of answerable questions with a right start among the `top` a held-out starter ranks highest."""
    hits = []
    for held in folds(examples):
        starter = fit_ranker([e for e, h in zip(examples, held) if not h], START_FEATURES)
        for e in (e for e, h in zip(examples, held) if h and e.item.answerable):
            order: np.ndarray | list[int] = (np.argsort(-starter.logits(e.features), kind="stable")[:top]
                                             if len(e.right) else [])
            hits.append(bool(e.right[order].any()) if len(order) else False)
    return float(np.mean(hits))


@dataclass(frozen=True)
class Outcome:
    """One question answered with a given ranker, before any gate."""

    signals: dict[str, float] | None  # None: no candidate at all
    correct: bool  # the chosen span is right (answerable questions)
    ceiling: bool  # some candidate is right


def outcomes(examples: list[Example], ranker: Linear) -> list[Outcome]:
    out = []
    for e in examples:
        candidates = list(e.measured.spans.candidates)
        if not candidates:
            out.append(Outcome(None, False, False))
            continue
        logits = ranker.logits(e.features)
        best = int(np.argmax(logits))
        signals = answer_signals(e.measured.asked, candidates, logits, best, e.measured.evidence,
                                 e.measured.weights[candidates[best].window.doc_id])
        out.append(Outcome(signals, bool(e.right[best]), bool(e.right.any())))
    return out


def folds(examples: list[Example]) -> list[np.ndarray]:
    """Held-out masks, whole documents at a time (every document once)."""
    groups = sorted({e.group for e in examples})
    if len(groups) < 2:
        raise AssistantError("fitting holds documents out in turn: give questions about at least two documents")
    k = min(FOLDS, len(groups))
    of = {g: i % k for i, g in enumerate(groups)}
    return [np.array([of[e.group] == f for e in examples]) for f in range(k)]


def held_out_outcomes(examples: list[Example]) -> list[Outcome]:
    """Each question's outcome under a ranker fitted without its document."""
    result: list[Outcome | None] = [None] * len(examples)
    for held in folds(examples):
        ranker = fit_ranker([e for e, h in zip(examples, held) if not h])
        kept = [i for i, h in enumerate(held) if h]
        for i, o in zip(kept, outcomes([examples[i] for i in kept], ranker)):
            result[i] = o
    return [o for o in result if o is not None]


def gate_data(examples: list[Example], found: list[Outcome], features: tuple[str, ...],
              right: bool) -> tuple[np.ndarray, np.ndarray]:
    """Signals and labels of the questions that had a candidate: the label is whether the chosen
    answer is right (`right`), or whether the question is answerable at all."""
    kept = [(e, o, o.signals) for e, o in zip(examples, found) if o.signals is not None]
    rows = [[signals[f] for f in features] for _, _, signals in kept]
    y = [e.item.answerable and (o.correct or not right) for e, o, _ in kept]
    return np.array(rows, dtype=np.float64), np.array(y, dtype=bool)


def held_out_p(examples: list[Example], found: list[Outcome], features: tuple[str, ...], right: bool) -> np.ndarray:
    """Each question's gate probability from a gate fitted without its document (NaN: no candidate)."""
    p = np.full(len(examples), np.nan)
    has = np.array([o.signals is not None for o in found])
    x, y = gate_data(examples, found, features, right)
    index = np.flatnonzero(has)
    for held in folds(examples):
        train, test = ~held[has], held[has]
        if test.any() and len(set(y[train])) == 2:
            gate = fit_linear(x[train], y[train], features, GATE_C)
            p[index[test]] = 1 / (1 + np.exp(-gate.logits(x[test])))
    return p


def scores(examples: list[Example], found: list[Outcome], p: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, abstention, false abstention and overall when answering at P >= threshold."""
    answered = np.array([not np.isnan(x) and x >= threshold for x in p])
    answerable = np.array([e.item.answerable for e in examples])
    correct = np.array([o.correct for o in found])
    right = np.where(answerable, answered & correct, ~answered)
    return {
        "accuracy": float((answered & correct)[answerable].mean()) if answerable.any() else float("nan"),
        "abstention": float((~answered)[~answerable].mean()) if (~answerable).any() else float("nan"),
        "false_abstention": float((~answered)[answerable].mean()) if answerable.any() else float("nan"),
        "overall": float(right.mean()),
    }


def choose_threshold(examples: list[Example], found: list[Outcome], p: np.ndarray,
                     max_false_abstention: float) -> tuple[float, dict[str, float]]:
    """The threshold with the most right answers or right abstentions whose false abstention
    stays within the limit."""
    best: tuple[float, dict[str, float]] | None = None
    for threshold in np.unique(np.round(p[~np.isnan(p)], 4)):
        got = scores(examples, found, p, float(threshold))
        if got["false_abstention"] <= max_false_abstention and (best is None or got["overall"] > best[1]["overall"]):
            best = (float(threshold), got)
    return best or (0.0, scores(examples, found, p, 0.0))


def fit(starts: list[Example], starter: Linear, examples: list[Example], assistant: Assistant, data: list[dict],
        max_false_abstention: float) -> Fitted:
    """Ranker and gates on every example, thresholds and reported numbers from held-out documents
    (the start ranker, fitted before the spans were measured, is the one fitted on all of them)."""
    import sklearn

    found = held_out_outcomes(examples)
    top = assistant.settings.max_span_starts
    measured: dict = {"questions": len(examples), "documents": len({e.group for e in examples}),
                      "start_recall": start_recall(starts, top) if top else 1.0,
                      "ceiling": float(np.mean([o.ceiling for e, o in zip(examples, found) if e.item.answerable])),
                      "ranker_accuracy": float(np.mean([o.correct for e, o in zip(examples, found)
                                                        if e.item.answerable]))}
    gates = {}
    # The span gate learns whether the chosen answer is right: a question it would answer wrongly
    # is better abstained on, and on held-out documents this separates answerable from
    # unanswerable questions better too (AUC 0.60 against 0.53 when fitted on answerability).
    # Free decoding's answers are not measured here, so its gate learns answerability.
    for name, features, right in (("gate", GATE_FEATURES, True), ("evidence_gate", EVIDENCE_FEATURES, False)):
        p = held_out_p(examples, found, features, right)
        threshold, held = choose_threshold(examples, found, p, max_false_abstention)
        x, y = gate_data(examples, found, features, right)
        gates[name] = fit_linear(x, y, features, GATE_C).model_copy(update={"threshold": threshold})
        measured[name] = {"threshold": threshold, **{k: round(v, 4) for k, v in held.items()}}
    settings = assistant.settings
    model = settings.model_path()
    return Fitted(
        fitted_with=FittedWith(
            model=model.name, model_sha256=file_sha256(model), prompts_sha256=assistant.prompts.digest,
            data=tuple(data), scikit_learn=sklearn.__version__, date=datetime.date.today().isoformat(),
            settings={k: getattr(settings, k) for k in ("evidence_windows", "max_span_words", "max_span_starts",
                                                          "top_k", "retrieval", "chunk_tokens", "chunk_overlap")},
        ),
        starter=starter, ranker=fit_ranker(examples), gate=gates["gate"], evidence_gate=gates["evidence_gate"],
        measured=measured,
    )


def measure_reader(assistant: Assistant, qset: QuestionSet, items: list[Item],
                   tick: Callable[[], None] = lambda: None) -> list[Example]:
    """Each question read by the reader: its spans, best first, labelled right or not."""
    out = []
    for item in items:
        measured = assistant.measure(item.question, item.doc_id)
        found = measured.reading.found if measured.reading is not None else ()
        right = np.array([item.answerable and right_span(f.span.text, item.answers) for f in found], dtype=bool)
        out.append(Example(item, item.doc_id or qset.name, measured, np.zeros((len(found), 0)), right))
        tick()
    return out


def reader_outcomes(assistant: Assistant, examples: list[Example], weight: float = 0.0) -> list[Outcome]:
    """The reader's best span of each question (reranked with the model's scores by `weight`, for
    decoding both), with the signals its gate reads."""
    out = []
    for e in examples:
        if not len(e.right):
            out.append(Outcome(None, False, False))
            continue
        assert e.measured.reading is not None
        right = {f.span: bool(r) for f, r in zip(e.measured.reading.found, e.right)}
        draft = assistant.read(e.measured, weight)
        out.append(Outcome(dict(draft.signals), bool(draft.span and right.get(draft.span)), bool(e.right.any())))
    return out


LLM_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def llm_weight(assistant: Assistant, examples: list[Example]) -> tuple[float, dict[float, float]]:
    """For decoding both, the weight of the model's log-probability per token against the reader's
    score that picks a right span most often (and each weight's share); 0 for the reader alone."""
    if assistant.settings.decoding != "both":
        return 0.0, {}
    answerable = [e for e in examples if e.item.answerable]
    shares = {w: float(np.mean([o.correct for o in reader_outcomes(assistant, answerable, w)])) for w in LLM_WEIGHTS}
    return max(shares, key=lambda w: (shares[w], -w)), shares


def fit_reader(examples: list[Example], assistant: Assistant, data: list[dict],
               max_false_abstention: float) -> ReaderGate:
    """The reader's gate on every example; its threshold and reported numbers from held-out documents."""
    import sklearn

    weight, shares = llm_weight(assistant, examples)
    found = reader_outcomes(assistant, examples, weight)
    answerable = [o for e, o in zip(examples, found) if e.item.answerable]
    if len({o.correct for o in found if o.signals is not None}) < 2:
        raise AssistantError("the reader's answers to these questions are all right or all wrong: no gate to fit; "
                             "give more questions, with and without answers")
    p = held_out_p(examples, found, READER_FEATURES, True)
    threshold, held = choose_threshold(examples, found, p, max_false_abstention)
    x, y = gate_data(examples, found, READER_FEATURES, True)
    gate = fit_linear(x, y, READER_FEATURES, GATE_C).model_copy(update={"threshold": threshold})
    settings = assistant.settings
    reader, model = settings.reader_path(), settings.model_path() if settings.decoding == "both" else None
    measured = {"questions": len(examples), "documents": len({e.group for e in examples}),
                "ceiling": float(np.mean([o.ceiling for o in answerable])),
                "reader_accuracy": float(np.mean([o.correct for o in answerable])),
                "llm_weights": shares,
                "gate": {"threshold": threshold, **{k: round(v, 4) for k, v in held.items()}}}
    return ReaderGate(reader=reader.name, reader_sha256=file_sha256(reader), data=tuple(data),
                      settings={k: getattr(settings, k) for k in ("decoding", "top_k", "retrieval", "chunk_tokens",
                                                                  "chunk_overlap", "evidence_windows", "both_spans")},
                      scikit_learn=sklearn.__version__, date=datetime.date.today().isoformat(), gate=gate,
                      model=model.name if model else None, model_sha256=file_sha256(model) if model else None,
                      llm_weight=weight, measured=measured)
