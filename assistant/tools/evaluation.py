"""Score the pipeline against ground truth taken from the text: answers, citations, abstention,
retrieval, length and latency, per kind and per configuration. Deterministic; no LLM judge.

Does not write files (see reporting.py) and does not tune anything but the abstention gate.
"""

import json
import statistics
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from assistant.answering import Answer
from assistant.citations import MARKER, Citation, markers
from assistant.errors import AssistantError
from assistant.loading import read_bounded
from assistant.spans import Span
from assistant.tools.tables import percentile

FIELDS = ("id", "question", "answers", "evidence", "kind")
UNANSWERABLE = "unanswerable"
MAX_SET_BYTES = 256_000_000  # SQuAD's whole train set as JSONL is ~40 MB

if TYPE_CHECKING:
    from assistant.answering import Assistant
    from assistant.settings import Settings


@dataclass(frozen=True)
class Item:
    id: str
    question: str
    answers: tuple[str, ...]
    evidence: str
    kind: str
    split: str
    doc_id: str | None = None  # the document the question is about; None: any indexed one

    @property
    def answerable(self) -> bool:
        return self.kind != UNANSWERABLE


@dataclass(frozen=True)
class QuestionSet:
    """The items of one question file (one split of it), and where the documents they name are."""

    path: Path
    split: str
    items: tuple[Item, ...]
    documents: dict[str, Path]  # doc name -> file, for every doc an item names

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}" + ("" if self.split == "all" else f" [{self.split}]")


@dataclass(frozen=True)
class Scored:
    item: Item
    answer: Answer
    correct: bool
    f1: float
    coverage: float | None  # share of the evidence covered by cited spans
    precision: float | None  # share of cited spans that overlap the evidence
    phantoms: int
    passage_rank: int | None  # 1-based rank of the first retrieved chunk holding the evidence
    sentence_rank: int | None  # 1-based rank of the first evidence sentence among ranked sentences
    in_windows: bool | None  # the evidence overlaps a window the answer was chosen from
    words: int
    exact: float  # SQuAD exact match (an abstention matches an unanswerable question)
    squad_f1: float  # SQuAD token F1, the same way


def load_set(path: Path, split: str, docs: Path | None = None) -> QuestionSet:
    """The items of `split` in a JSONL question file ('all', or a file with no split fields: every
    item). Items that name a `doc` find it in `docs`, or in a docs/ folder beside the file."""
    items = load_items(path, split)
    folder = docs or path.parent / "docs"
    documents = {}
    for name in sorted({i.doc_id for i in items if i.doc_id}):
        found = folder / name
        if not found.is_file():
            raise AssistantError(f"{path} names the document {name!r}, not found in {folder}/; pass --docs DIR")
        documents[name] = found
    whole = all(i.split == "all" for i in items)
    return QuestionSet(path, "all" if whole else split, tuple(items), documents)


def load_items(path: Path, split: str = "all") -> list[Item]:
    """Read a JSONL question set; every line needs id, question, answers, evidence, kind."""
    if not path.exists():
        raise AssistantError(f"no question file at {path}")
    items = []
    try:
        lines = read_bounded(path, MAX_SET_BYTES, "the question file ").decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise AssistantError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
    for number, line in enumerate(lines, start=1):
        if line.strip():
            items.append(_item(line, number, path))
    if not items:
        raise AssistantError(f"no questions in {path}")
    if all(i.split == "all" for i in items):
        return items  # a file without splits runs whole
    chosen = [i for i in items if split == "all" or i.split == split]
    if not chosen:
        splits = ", ".join(sorted({i.split for i in items}))
        raise AssistantError(f"no questions in {path} for split {split!r}; it has: {splits}")
    return chosen


def _item(line: str, number: int, path: Path) -> Item:
    try:
        raw = json.loads(line.lstrip("\ufeff"))
        missing = [f for f in FIELDS if f not in raw]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if not isinstance(raw["question"], str) or not isinstance(raw["answers"], list):
            raise ValueError("question must be text and answers a list")
        return Item(str(raw["id"]), raw["question"], tuple(str(a) for a in raw["answers"]), raw["evidence"] or "",
                    str(raw["kind"]), str(raw.get("split") or "all"), raw.get("doc"))
    except (ValueError, TypeError, AttributeError) as e:
        raise AssistantError(f"{path}:{number}: not a valid item ({e})") from None


def fold(text: str) -> str:
    """Case- and punctuation-folded text: '“Thirty-Day” ceasefire!' -> 'thirty day ceasefire'."""
    text = MARKER.sub(" ", text).lower().replace("’", "'")
    text = "".join(" " if c in string.punctuation or c in "“”‘—–" else c for c in text)
    return " ".join(text.split())


def squad_normal(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in MARKER.sub(" ", text).lower() if c not in set(string.punctuation))
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def squad_scores(item: Item, answer: Answer) -> tuple[float, float]:
    """Exact match and token F1 as SQuAD 2.0 counts them: best over the accepted answers; an
    unanswerable question scores 1 for an abstention and 0 otherwise."""
    if not item.answerable or answer.abstained:
        return (float(answer.abstained and not item.answerable),) * 2
    said = squad_normal(answer.answer)
    exact = max(float(said == squad_normal(a)) for a in item.answers)
    return exact, max(_token_f1(said.split(), squad_normal(a).split()) for a in item.answers)


def token_f1(answer: str, truth: str) -> float:
    return _token_f1(fold(answer).split(), fold(truth).split())


def _token_f1(a: list[str], t: list[str]) -> float:
    common = sum(min(a.count(w), t.count(w)) for w in set(a))
    if not common:
        return 0.0
    p, r = common / len(a), common / len(t)
    return 2 * p * r / (p + r)


def evidence_span(item: Item, documents: dict[str, str]) -> Span | None:
    for doc_id, text in documents.items():
        at = text.find(item.evidence) if item.evidence else -1
        if at >= 0:
            return Span(doc_id, at, at + len(item.evidence), item.evidence)
    return None


def score(item: Item, answer: Answer, documents: dict[str, str]) -> Scored:
    folded = f" {fold(answer.answer)} "
    if item.answerable:
        correct = not answer.abstained and any(f" {fold(a)} " in folded for a in item.answers)
    else:
        correct = answer.abstained
    f1 = max((token_f1(answer.answer, a) for a in item.answers), default=float(answer.abstained))
    span = evidence_span(item, documents)
    coverage = precision = None
    if span and answer.citations:
        cited = [c for c in answer.citations if c.doc_id == span.doc_id]
        coverage = _covered(cited, span) / (span.end - span.start)
        precision = sum(1 for c in cited if c.overlaps(span)) / len(answer.citations)
    numbers = {c.n for c in answer.citations}
    windows = _rank(answer.windows, span, whole=False)
    return Scored(
        item, answer, correct, f1 if not answer.abstained else float(not item.answerable), coverage, precision,
        sum(1 for n in markers(answer.answer) if n not in numbers),
        _rank(answer.passages, span, whole=True),
        _rank(answer.evidence, span, whole=False),
        None if span is None else windows is not None,
        len(MARKER.sub(" ", answer.answer).split()), *squad_scores(item, answer),
    )


def _covered(spans: list[Citation], evidence: Span) -> int:
    """Characters of the evidence that the spans cover."""
    return len({i for s in spans for i in range(max(s.start, evidence.start), min(s.end, evidence.end))})


def _rank(found: Sequence[Span], evidence: Span | None, whole: bool) -> int | None:
    """Rank of the first hit that holds the evidence (whole) or overlaps it (a sentence of it)."""
    if evidence is None:
        return None
    for rank, hit in enumerate(found, start=1):
        if evidence.inside(hit) if whole else hit.overlaps(evidence):
            return rank
    return None


def summarise(scored: list[Scored], top_k: int) -> dict:
    """Every metric over a list of scored items."""
    answerable = [s for s in scored if s.item.answerable]
    unanswerable = [s for s in scored if not s.item.answerable]
    correct = [s for s in answerable if s.correct]
    abstained = [s for s in scored if s.answer.abstained]
    true_abst = sum(1 for s in unanswerable if s.answer.abstained)
    p = _ratio(true_abst, len(abstained))
    r = _ratio(true_abst, len(unanswerable))
    return {
        "items": len(scored),
        "overall": _ratio(len(correct) + true_abst, len(scored)),
        "accuracy": _ratio(len(correct), len(answerable)),
        "exact_match": _mean([s.exact for s in scored]),
        "squad_f1": _mean([s.squad_f1 for s in scored]),
        "token_f1": _mean([s.f1 for s in answerable]),
        "cited_evidence": _ratio(sum(1 for s in correct if (s.coverage or 0) > 0), len(correct)),
        "evidence_coverage": _mean([s.coverage or 0.0 for s in correct]),
        "citation_precision": _mean([s.precision for s in answerable if s.precision is not None]),
        "phantom_markers": sum(s.phantoms for s in scored),
        "abstention_precision": p,
        "abstention_recall": r,
        "abstention_f1": _f1(p, r),
        "false_abstention": _ratio(sum(1 for s in answerable if s.answer.abstained), len(answerable)),
        f"recall@{top_k}": _ratio(sum(1 for s in answerable if s.passage_rank), len(answerable)),
        "mrr": _mean([1 / s.passage_rank if s.passage_rank else 0.0 for s in answerable]),
        "evidence_sentence@1": _ratio(sum(1 for s in answerable if s.sentence_rank == 1), len(answerable)),
        "evidence_in_windows": _ratio(sum(1 for s in answerable if s.in_windows), len(answerable)),
        "median_words": _median([s.words for s in scored if not s.answer.abstained]),
        **_latency(scored),
    }


def _latency(scored: list[Scored]) -> dict:
    out = {}
    for stage in ("retrieve_s", "generate_s", "total_s"):
        values = [getattr(s.answer.timing, stage) for s in scored]
        out[f"{stage[:-2]}_p50_s"] = round(percentile(values, 0.5), 4) if values else None
        out[f"{stage[:-2]}_p95_s"] = round(percentile(values, 0.95), 4) if values else None
    tokens = sum(s.answer.extra.get("llm_tokens", 0) for s in scored)
    seconds = sum(s.answer.timing.generate_s for s in scored)
    out["llm_tokens_per_s"] = round(tokens / seconds, 1) if seconds else None
    return out


def by_kind(scored: list[Scored], top_k: int) -> dict[str, dict]:
    kinds = sorted({s.item.kind for s in scored})
    return {k: summarise([s for s in scored if s.item.kind == k], top_k) for k in kinds}


def by_document(scored: list[Scored], top_k: int) -> dict[str, dict]:
    docs = sorted({s.item.doc_id for s in scored if s.item.doc_id})
    return {d: summarise([s for s in scored if s.item.doc_id == d], top_k) for d in docs}


def run(ask: Callable[..., Answer], items: list[Item], documents: dict[str, str],
        tick: Callable[[], None] = lambda: None) -> list[Scored]:
    results = []
    for item in items:
        results.append(score(item, ask(item.question, doc_id=item.doc_id), documents))
        tick()
    return results


def record(s: Scored) -> dict:
    """One item of report.json."""
    return {
        "id": s.item.id, "kind": s.item.kind, "question": s.item.question, "accepted": list(s.item.answers),
        **s.answer.to_json(), "correct": s.correct, "f1": round(s.f1, 3), "coverage": s.coverage,
        "precision": s.precision, "phantoms": s.phantoms, "passage_rank": s.passage_rank,
        "sentence_rank": s.sentence_rank, "words": s.words,
        "doc": s.item.doc_id, "exact": s.exact, "squad_f1": round(s.squad_f1, 3), "in_windows": s.in_windows,
        "signals": dict(s.answer.signals) if s.answer.signals else None, "p_answerable": s.answer.p_answerable,
    }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _median(values: list[float]) -> float | None:
    return round(percentile(values, 0.5), 4) if values else None


def _f1(p: float | None, r: float | None) -> float | None:
    return round(2 * p * r / (p + r), 4) if p and r else (0.0 if p is not None and r is not None else None)


ABLATIONS: tuple[tuple[str, dict], ...] = (
    ("dense only", {"retrieval": "dense"}),
    ("bm25 only", {"retrieval": "bm25"}),
    ("reader and LLM", {"decoding": "both"}),
    ("LLM spans, no reader", {"decoding": "span"}),
    ("free decoding", {"decoding": "free"}),
    ("top-k 2", {"top_k": 2}),
    ("top-k 8", {"top_k": 8}),
)


@dataclass(frozen=True)
class Suite:
    """One question set's results: the default configuration and every row of the table."""

    qset: QuestionSet
    default: list[Scored]
    rows: list[dict]  # one per configuration: name, settings, metrics


def run_suite(assistant: "Assistant", qset: QuestionSet, items: list[Item], ablations: bool,
              tick: Callable[[], None]) -> Suite:
    """The default configuration, the same answers without the gate, then each ablation."""
    from assistant.answering import Assistant

    settings = assistant.settings
    docs = assistant.index.documents
    ungated = run(assistant.ungated, items, docs, tick)
    default = [score(s.item, assistant.gated(s.answer), docs) for s in ungated]
    rows = [_row("default", {}, default, settings), _row("no gate", {"abstain_gate": False}, ungated, settings)]
    for name, change in ABLATIONS if ablations else ():
        variant = Assistant(settings.model_copy(update=change), share=assistant)
        rows.append(_row(name, change, run(variant.ask, items, docs, tick), settings.model_copy(update=change)))
    return Suite(qset, default, rows)


def _row(name: str, change: dict, scored: list[Scored], settings: "Settings") -> dict:
    return {"name": name, "settings": change, **summarise(scored, settings.top_k)}


def index_sets(sets: list[QuestionSet], settings: "Settings", scratch: Path,
               progress: Callable[[str, int, int], None] | None = None) -> None:
    """Index every document the sets name into `scratch` (unchanged ones cost nothing)."""
    from assistant.indexing import index_documents
    from assistant.loading import load_document

    paths = {name: path for q in sets for name, path in q.documents.items()}
    if paths:
        docs = [load_document(path, settings.max_file_mb) for path in paths.values()]
        index_documents(docs, settings.model_copy(update={"index_dir": scratch, "chroma_url": None}),
                        progress or (lambda *_: None))


def assistant_for(qset: QuestionSet, base: "Assistant", scratch: Path) -> "Assistant":
    """`base` for a set whose items name no document (or when `base` already reads `scratch`);
    otherwise an Assistant sharing its models over `scratch`, where index_sets put the documents."""
    from assistant.answering import Assistant

    if not qset.documents or base.settings.index_dir == scratch:
        return base
    return Assistant(base.settings.model_copy(update={"index_dir": scratch, "chroma_url": None}), share=base)


def gold_paragraphs(qset: QuestionSet) -> list[tuple[Item, str]]:
    """Each item with the paragraph (blank-line separated) of its document that holds its
    evidence; an unanswerable item with the one holding the look-alike answer it was written
    around, else the one sharing most of its words: SQuAD's question-with-its-paragraph setting."""
    from assistant.tools.reader_data import closest

    rows = {r["id"]: r for r in map(json.loads, qset.path.read_text(encoding="utf-8").splitlines()) if r}
    paragraphs: dict[str, tuple[str, ...]] = {}
    found = []
    for item in qset.items:
        if item.doc_id not in qset.documents:
            continue
        if item.doc_id not in paragraphs:
            text = qset.documents[item.doc_id].read_text(encoding="utf-8")
            paragraphs[item.doc_id] = tuple(p for p in text.split("\n\n") if p.strip())
        mine = paragraphs[item.doc_id]
        look_alike = [a for a in rows.get(item.id, {}).get("plausible_answers") or [] if a]
        holds = item.evidence or (look_alike[0] if look_alike else None)
        n = next((i for i, p in enumerate(mine) if holds and holds in p), None)
        found.append((item, mine[n if n is not None else closest(item.question, mine)]))
    return found


def reader_alone(read: Callable[[str, str], str | None], pairs: list[tuple[Item, str]],
                 tick: Callable[[], None] = lambda: None) -> dict:
    """SQuAD 2.0's EM and F1 of a reader given each question's own paragraph (`read` returns its
    answer, or None for "no answer"), over all items and over those with and without an answer."""
    from assistant.answering import Answer, Timing

    rows = []
    for item, paragraph in pairs:
        said = read(item.question, paragraph)
        answer = Answer(item.question, said or "", said is None, (), Timing(0, 0, 0))
        rows.append((item.answerable, *squad_scores(item, answer)))
        tick()

    def mean(kept: list[tuple[bool, float, float]]) -> dict:
        return {"items": len(kept), "exact_match": _mean([r[1] for r in kept]), "f1": _mean([r[2] for r in kept])}

    return {"all": mean(rows), "answerable": mean([r for r in rows if r[0]]),
            "unanswerable": mean([r for r in rows if not r[0]])}
