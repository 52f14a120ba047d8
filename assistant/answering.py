"""Answer a question: retrieve, choose evidence, extract or generate, gate, verify citations.

The one entry point for the CLI, the chat loop, the UI and the eval suite. Loads every model once
per `Assistant`; `ask` is the per-question path.
"""

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, astuple, dataclass, field, replace
from typing import Any

import numpy as np

from assistant.abstention import (EVIDENCE_FEATURES, GATE_FEATURES, NOT_IN_DOCUMENT, READER_FEATURES, Signals,
                                  answer_signals, evidence_signals, p_answerable, reader_signals)
from assistant.citations import Citation, citing, verify, with_markers
from assistant.embedding import Embedder, shared_embedder
from assistant.errors import AssistantError
from assistant.evidence import TEMPLATE_TOKEN, Evidence, SentenceRanker, Window
from assistant.extraction import SpanScores, Start, find_starts, passage, score_starts, span_contexts
from assistant.fitted import (Fitted, Linear, ReaderGate, default_path, file_sha256, load_fitted, load_reader_gate,
                              reader_gate_path)
from assistant.generation import ChatModel, LocalLLM, Prompt, ready_model
from assistant.lexicon import content_stems, word_weights
from assistant.loading import check_question, shown
from assistant.memo import Memo, key_of
from assistant.prompting import PromptSet, load_prompts, messages
from assistant.reading import Reader, Reading, reranked
from assistant.ranking import (SPAN_FEATURES, START_FEATURES, Candidate, Question, read_question, span_features,
                               start_features)
from assistant.retrieval import Passage, Retriever
from assistant.settings import Settings
from assistant.spans import Span
from assistant.store import OpenIndex, open_index

OnText = Callable[[str], None]


@dataclass(frozen=True)
class Timing:
    retrieve_s: float
    generate_s: float
    total_s: float


@dataclass(frozen=True)
class Answer:
    question: str
    answer: str
    abstained: bool
    citations: tuple[Citation, ...]
    timing: Timing
    evidence: tuple[Evidence, ...] = ()
    passages: tuple[Passage, ...] = ()
    signals: Signals | None = None
    p_answerable: float | None = None
    answer_span: Span | None = None  # the exact text of a document the answer copies
    windows: tuple[Window, ...] = ()
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The machine interface of `assistant ask --json`."""
        return {
            "question": self.question,
            "answer": self.answer,
            "abstained": self.abstained,
            "citations": [c.to_json() for c in self.citations],
            "answer_span": ({"doc": self.answer_span.doc_id, "start": self.answer_span.start,
                             "end": self.answer_span.end} if self.answer_span else None),
            "timing": {k: round(v, 4) for k, v in asdict(self.timing).items()},
        }


@dataclass(frozen=True)
class Draft:
    text: str  # the answer without markers
    citations: list[Citation]  # what the [1] after it stands for
    signals: Signals
    span: Span | None


@dataclass(frozen=True)
class Spans:
    """The start words of a question's evidence and the candidate spans scored from the best of them."""

    starts: tuple[Start, ...]
    start_features: np.ndarray  # one row of START_FEATURES per start
    candidates: tuple[Candidate, ...]
    start_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the start ranker's logit, per candidate


@dataclass(frozen=True)
class Measured:
    question: str
    asked: Question
    passages: tuple[Passage, ...]
    ranked: tuple[Evidence, ...]
    windows: tuple[Window, ...]
    evidence: dict[str, float]  # the evidence signals of the gates
    spans: "Spans"  # with span decoding
    retrieve_s: float
    generate_s: float  # the model's time scoring the candidates
    weights: dict[str, dict[str, float]] = field(default_factory=dict)  # per document of the windows: word weights
    reading: Reading | None = None  # with reader decoding


class Assistant:
    settings: Settings
    prompts: PromptSet
    embedder: Embedder
    reader: Reader | None
    index: OpenIndex
    retriever: Retriever
    ranker: SentenceRanker
    fitted: Fitted | None
    reader_gate: ReaderGate | None
    _unfitted: bool

    def __init__(self, settings: Settings, share: "Assistant | None" = None, memo: bool = False,
                 unfitted: bool = False) -> None:
        """Loads everything; with `share`, reuses its models (they must not differ) and, when both
        read the same index, its index.

        With `memo` or a `score_cache` file (and in every Assistant sharing this one), the
        model's work for a question and evidence it has already seen is reused, with the time it
        took then: the eval suite's configurations often pick the same evidence. `unfitted` skips
        loading the fitted ranker and gates: `assistant fit` measures candidates to make them."""
        self.settings = settings
        self._unfitted = unfitted or (share is not None and share._unfitted)
        remembered = memo or settings.score_cache is not None
        self._memo: Memo | None = share._memo if share else (Memo(settings.score_cache) if remembered else None)
        self.prompts = load_prompts(settings.prompts_dir)
        self._word_weights: dict[str, dict[str, float]] = {}
        if share:
            self._share(share)
            return
        self._models: dict[str, ChatModel] = {}
        self.reader = self._reader()
        # The model loads and reads the fixed head of every prompt (system turn and examples, ~2 s
        # on two cores) in llama.cpp, which releases the GIL, while this thread spends its seconds
        # importing torch, sentence-transformers, llama-index and chromadb.
        with ThreadPoolExecutor(max_workers=1) as pool:
            llm = pool.submit(ready_model, settings, self.prompts) if settings.decoding in ("span", "free") else None
            if llm is not None and settings.llm_url is not None:
                llm.result()  # a server that is not there fails before the slow load
            # The embedder before the index: a missing or broken model says so, rather than that
            # the index was built with another one.
            self.embedder = shared_embedder(settings.embedding_path(), settings.embed_batch_size)
            self.index = open_index(settings)
            self.retriever = Retriever(self.index, self.embedder, settings)
            self.ranker = SentenceRanker(self.index, self.embedder.embed_texts)
            if llm is not None:
                self._models["llm"] = llm.result()
        self.fitted, self.reader_gate = self._fitted(), self._reader_gate()

    @property
    def llm(self) -> ChatModel:
        """The language model, loaded on first use (reader decoding never needs it), shared by `share`."""
        if "llm" not in self._models:
            self._models["llm"] = ready_model(self.settings, self.prompts)
        return self._models["llm"]

    def _reader(self, share: "Assistant | None" = None) -> Reader | None:
        path = self.settings.reader_path()
        if self.settings.decoding not in ("reader", "both"):
            return None
        shared = share.reader if share is not None and share.settings.reader_path() == path else None
        return shared or Reader(path, threads=self.settings.reader_threads)

    def _share(self, share: "Assistant") -> None:
        """`share`'s models, and its index when this one reads the same."""
        settings = self.settings
        self.embedder, self._models, self.reader = share.embedder, share._models, self._reader(share)
        if (settings.index_dir, settings.chroma_url) == (share.settings.index_dir, share.settings.chroma_url):
            self.index, self.ranker = share.index, share.ranker
        else:
            self.index = open_index(settings)
            self.ranker = SentenceRanker(self.index, self.embedder.embed_texts)
        self.retriever = Retriever(self.index, self.embedder, settings)
        self.fitted, self.reader_gate = self._fitted(), self._reader_gate()

    def _reader_gate(self) -> ReaderGate | None:
        settings = self.settings
        if self._unfitted or self.reader is None or not (settings.abstain_gate or settings.decoding == "both"):
            return None  # decoding both reads the model's weight from the gate's file, gated or not
        model = settings.model_path() if settings.decoding == "both" else None
        return load_reader_gate(settings.fit_file or reader_gate_path(model), settings.reader_path(), READER_FEATURES,
                                model)

    def _fitted(self) -> Fitted | None:
        """The span ranker and gates this model was fitted with; only a server model, which is
        never asked to score spans, may use another model's evidence gate."""
        settings = self.settings
        if self._unfitted or self.reader is not None or (settings.decoding == "free" and not settings.abstain_gate):
            return None
        model = settings.model_path()
        path = settings.fit_file or default_path(model)
        if settings.llm_url is not None:
            return load_fitted(path, None, self.prompts.digest, {"evidence_gate": EVIDENCE_FEATURES})
        return load_fitted(path, model, self.prompts.digest, FEATURES)

    def ask(self, question: str, on_text: OnText | None = None, doc_id: str | None = None) -> Answer:
        """Answer from every indexed document, or from `doc_id` alone."""
        return self.gated(self.ungated(question, on_text, doc_id))

    def reload(self) -> None:
        """Pick up documents indexed since this Assistant was made, keeping the loaded models."""
        self.index = open_index(self.settings)
        self.retriever = Retriever(self.index, self.embedder, self.settings)
        self.ranker = SentenceRanker(self.index, self.embedder.embed_texts)
        self._word_weights = {}

    def measure(self, question: str, doc_id: str | None = None, starter: Linear | None = None,
                spans: bool = True) -> "Measured":
        """Everything measured before an answer is chosen: evidence, its signals and, with span
        decoding, every start word and the candidate spans from those the start ranker (the
        fitted one, or `starter`) ranks highest. Without `spans`, start words only."""
        began = time.perf_counter()
        question = check_question(question, self.settings)
        if doc_id is not None and doc_id not in self.index.documents:
            raise AssistantError(f"no document '{shown(doc_id)}' in the index; indexed: "
                                 f"{', '.join(shown(d) for d in sorted(self.index.documents))}")
        # Chat-template tokens in a question are text, never control; as words they would only
        # pull text that carries them (a planted instruction) into the evidence.
        plain = " ".join(TEMPLATE_TOKEN.sub(" ", question).split()) or question
        passages, ranked, windows = self.evidence(plain, doc_id)
        asked = read_question(plain)
        evidence = evidence_signals(asked, windows, self._weights(windows[0].doc_id)) if windows else {}
        retrieve_s = time.perf_counter() - began
        found: Spans = Spans((), np.zeros(0), ())
        generate_s, reading = 0.0, None
        if windows and self.reader is not None:
            reading = self.reader.read(plain, passages)
            if self.settings.decoding == "both" and reading.found:
                reading = self._rescored(plain, reading)
            generate_s = time.perf_counter() - began - retrieve_s
        elif windows and self.settings.decoding == "span":
            self._local()  # a server fails here, before any work
            if starter is None and not self._unfitted:
                starter = self._require_fitted().starter
            found, generate_s = self._spans(asked, windows, starter, spans)
        weights = {w.doc_id: self._weights(w.doc_id) for w in windows}
        return Measured(question, asked, tuple(passages), tuple(ranked), tuple(windows), evidence, found,
                        retrieve_s, generate_s, weights, reading)

    def evidence(self, question: str, doc_id: str | None = None) -> tuple[list[Passage], list[Evidence], list[Window]]:
        """The retrieved chunks, their sentences ranked, and the windows answers are taken from."""
        vector = self.embedder.embed_query(question)
        passages = self.retriever.retrieve(question, vector, doc_id)
        ranked = self.ranker.rank(question, vector, passages)
        return passages, ranked, self.ranker.windows(question, ranked, self.settings.evidence_windows)

    def prompt(self, question: str, windows: list[Window]) -> Prompt:
        """What the model reads: every window for span decoding, the best one for free decoding."""
        if self.settings.decoding == "span":
            return self._prompts(question, [w.text for w in windows])[0]
        return self._local().render(messages(self.prompts, windows[0].text, question))

    def ungated(self, question: str, on_text: OnText | None = None, doc_id: str | None = None) -> Answer:
        """The answer before the abstention gate, with the signals the gate reads."""
        evaluated = self._evaluated()
        measured = self.measure(question, doc_id)
        began = time.perf_counter()
        draft, generate_s = None, measured.generate_s
        if measured.windows and self.settings.decoding == "free":
            draft, generate_s = self._free(measured, on_text)
        elif measured.reading is not None and measured.reading.found:
            draft = self.read(measured)
        elif measured.spans.candidates:
            draft = self.choose(measured)
        if on_text and draft is not None and self.settings.decoding != "free":  # free decoding streamed it
            on_text(draft.text)
        text, citations = NOT_IN_DOCUMENT, list[Citation]()
        if draft is not None:
            text, citations = verify(with_markers(draft.text, len(draft.citations)), draft.citations,
                                     self.index.documents)
        if not citations:
            text = NOT_IN_DOCUMENT
        checked = time.perf_counter() - began - (generate_s if self.settings.decoding == "free" else 0.0)
        timing = Timing(measured.retrieve_s, generate_s, measured.retrieve_s + generate_s + checked)
        return Answer(measured.question, text, not citations, tuple(citations), timing, measured.ranked[:5],
                      measured.passages, draft.signals if draft else None, None,
                      draft.span if draft and citations else None, measured.windows,
                      {"llm_tokens": self._evaluated() - evaluated})

    def gated(self, answer: Answer) -> Answer:
        if self.reader_gate is not None and self.settings.abstain_gate:
            return apply_gate(answer, self.reader_gate.gate)
        if not self.settings.abstain_gate or self.fitted is None:
            return answer
        gate = self.fitted.gate if self.settings.decoding == "span" else self.fitted.evidence_gate
        return apply_gate(answer, gate)

    def choose(self, measured: "Measured", ranker: Linear | None = None) -> Draft:
        """The candidate the fitted ranker (or `ranker`) scores best, cited by its sentences."""
        ranker = ranker or self._require_fitted().ranker
        candidates = list(measured.spans.candidates)
        logits = ranker.logits(span_features(measured.asked, candidates, measured.spans.start_scores))
        best = int(np.argmax(logits))
        chosen = candidates[best]
        span = chosen.span
        cited = [s for s in chosen.window.sentences if s.overlaps(span)]
        signals = answer_signals(measured.asked, candidates, logits, best, measured.evidence,
                                 measured.weights[chosen.window.doc_id])
        return Draft(chosen.text, citing(cited), signals, span)

    def read(self, measured: "Measured", weight: float | None = None) -> Draft:
        """The reader's best span (by `weight`, or the fitted one, with decoding both), cited by its sentences."""
        assert measured.reading is not None
        weight = (self.reader_gate.llm_weight if self.reader_gate else 0.0) if weight is None else weight
        reading = reranked(measured.reading, weight)
        best = reading.found[0].span
        cited = [s for s in self.index.sentences if s.overlaps(best)]
        signals = reader_signals(measured.asked, reading, " ".join(x.text for x in cited), measured.evidence,
                                 self._weights(best.doc_id))
        return Draft(best.text, citing(cited), signals, best)

    def _rescored(self, question: str, reading: Reading) -> Reading:
        """The reader's best spans, each with the model's log-probability per token of answering it."""
        found = reading.found[: self.settings.both_spans]
        texts, starts = span_contexts([f.span for f in found], self.index.sentences)
        if len(starts) < len(found):
            return reading  # a span outside every sentence: nothing this model can be shown
        scored = score_starts(self._local(), self._prompts(question, texts)[0], texts, starts)
        rescored = [replace(f, llm=s[0].logprob / (s[0].n_tokens + 1)) for f, s in zip(found, scored)]
        return Reading((*rescored, *reading.found[len(found):]), reading.no_answer)

    def _evaluated(self) -> int:  # tokens the language model has evaluated (0 before it is loaded)
        return self._models["llm"].evaluated if "llm" in self._models else 0

    def _require_fitted(self) -> Fitted:
        if self.fitted is None:
            raise AssistantError("span decoding needs a fitted ranker; run 'assistant fit'")
        return self.fitted

    def _spans(self, asked: Question, windows: list[Window], starter: Linear | None,
               scored: bool) -> tuple["Spans", float]:
        """Start words, and the candidate spans from the `max_span_starts` that `starter` ranks
        highest (without one, as `assistant fit` measures: the likeliest first tokens)."""
        texts = [w.text for w in windows]
        starts, seconds = self._starts(asked.text, texts)
        if not starts:
            return Spans((), np.zeros(0), ()), seconds
        features = start_features(asked, windows, starts)
        logits = starter.logits(features) if starter else features[:, START_FEATURES.index("first")]
        chosen = [starts[i] for i in np.argsort(-logits, kind="stable")[: self.settings.max_span_starts or None]]
        candidates: list[Candidate] = []
        if scored:
            by_start, took = self._continuations(asked.text, texts, chosen)
            seconds += took
            candidates = [Candidate(windows[x.window], x, s) for x in chosen for s in by_start[x]]
        score_of = dict(zip(starts, logits))
        return Spans(tuple(starts), features, tuple(candidates),
                     np.array([score_of[c.start] for c in candidates])), seconds

    def _starts(self, question: str, texts: list[str]) -> tuple[list[Start], float]:
        key = key_of("starts", 2, *self._identity(), question, texts, self.settings.max_span_words)
        remembered = self._memo.get(key) if self._memo is not None else None
        if remembered is None:
            began = time.perf_counter()
            asked, content_free = self._prompts(question, texts)
            found = find_starts(self._local(), asked, content_free, texts, question, self.settings.max_span_words)
            remembered = {"seconds": time.perf_counter() - began, "starts": [astuple(x) for x in found]}
            if self._memo is not None:
                self._memo.put(key, remembered)
        return [Start(w, o, tuple(e), f, c) for w, o, e, f, c in remembered["starts"]], remembered["seconds"]

    def _continuations(self, question: str, texts: list[str],
                       starts: list[Start]) -> tuple[dict[Start, list[SpanScores]], float]:
        """Every allowed span from each of `starts`, scored; remembered start by start."""
        keys = {x: key_of("spans", 2, *self._identity(), question, texts, x.window, x.offset, x.ends) for x in starts}
        known: dict[Start, Any] = {x: self._memo.get(k) for x, k in keys.items()} if self._memo is not None else {}
        missing = [x for x in starts if known.get(x) is None]
        if missing:
            began = time.perf_counter()
            scored = score_starts(self._local(), self._prompts(question, texts)[0], texts, missing)
            each = (time.perf_counter() - began) / len(missing)
            for x, spans in zip(missing, scored):
                known[x] = {"seconds": each, "spans": [astuple(s) for s in spans]}
                if self._memo is not None:
                    self._memo.put(keys[x], known[x])
        return ({x: [SpanScores(*row) for row in known[x]["spans"]] for x in starts},
                sum(known[x]["seconds"] for x in starts))

    def _prompts(self, question: str, texts: list[str]) -> tuple[Prompt, Prompt]:
        """The prompts asking `question`, and the content-free question, over the windows."""
        shown, llm = passage(texts), self._local()
        return (llm.render(messages(self.prompts, shown, question)),
                llm.render(messages(self.prompts, shown, self.prompts.content_free)))

    def _local(self) -> LocalLLM:
        """The local model, which alone can score spans and render prompts."""
        if not isinstance(self.llm, LocalLLM):
            raise AssistantError("span decoding needs the local model; with --llm-url use --decoding free")
        return self.llm

    def _identity(self) -> tuple[str, str | None, str]:
        """What a remembered score depends on besides its question and evidence."""
        return self.llm.name, self._model_sha(), self.prompts.digest

    def _free(self, measured: "Measured", on_text: OnText | None) -> tuple[Draft | None, float]:
        window = measured.windows[0]
        turns = messages(self.prompts, window.text, measured.question)
        key = key_of("free", *self._identity(), turns, self.settings.max_answer_tokens)
        remembered = self._memo.get(key) if self._memo is not None else None
        if remembered is None:
            began = time.perf_counter()
            text = self.llm.chat(turns, self.settings.max_answer_tokens, on_text).text
            remembered = {"text": text, "seconds": time.perf_counter() - began}
            if self._memo is not None:
                self._memo.put(key, remembered)
        text = remembered["text"]
        said = content_stems(text)
        if not text or len(said - content_stems(window.text)) * 2 > len(said):
            return None, remembered["seconds"]  # mostly words the evidence does not contain: invented, so withdrawn
        at = window.text.find(text)
        span = Span(window.doc_id, window.start + at, window.start + at + len(text), text) if at >= 0 else None
        return Draft(text, citing(list(window.sentences)), measured.evidence, span), remembered["seconds"]

    def _weights(self, doc_id: str) -> dict[str, float]:
        if doc_id not in self._word_weights:
            self._word_weights[doc_id] = word_weights([x.text for x in self.index.sentences if x.doc_id == doc_id])
        return self._word_weights[doc_id]

    def _model_sha(self) -> str | None:
        return file_sha256(self.settings.model_path()) if isinstance(self.llm, LocalLLM) else None


FEATURES = {"starter": START_FEATURES, "ranker": SPAN_FEATURES, "gate": GATE_FEATURES,
            "evidence_gate": EVIDENCE_FEATURES}


def apply_gate(answer: Answer, gate: Linear | None) -> Answer:
    """Withdraw the answer when the fitted gate says the document does not hold it."""
    if gate is None or answer.signals is None:
        return answer
    p = p_answerable(gate, answer.signals)
    if p >= gate.threshold:
        return replace(answer, p_answerable=p)
    return replace(answer, answer=NOT_IN_DOCUMENT, abstained=True, citations=(), answer_span=None, p_answerable=p)
