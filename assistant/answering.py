"""Answer a question: retrieve, choose evidence, extract or generate, gate, verify citations.

The one entry point for the CLI, the chat loop, the UI and the eval suite. Loads every model once
per `Assistant`; `ask` is the per-question path.
"""

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import TypeVar

from assistant.abstention import NOT_IN_DOCUMENT, Gate, Signals, load_gate
from assistant.citations import MARKER, Citation, verify
from assistant.embedding import Embedder
from assistant.errors import AssistantError
from assistant.evidence import Evidence, SentenceRanker
from assistant.extraction import answer_type, extract
from assistant.generation import ChatModel, LocalLLM
from assistant.indexing import open_index
from assistant.lexicon import content_stems
from assistant.prompting import PromptSet, load_prompts, messages
from assistant.retrieval import Passage, Retriever
from assistant.settings import Settings

OnText = Callable[[str], None]
T = TypeVar("T")


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
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The machine interface of `assistant ask --json`."""
        return {
            "question": self.question,
            "answer": self.answer,
            "abstained": self.abstained,
            "citations": [asdict(c) for c in self.citations],
            "timing": {k: round(v, 4) for k, v in asdict(self.timing).items()},
        }


@dataclass(frozen=True)
class Draft:
    text: str  # the answer without markers
    citations: list[Citation]  # what the [1] after it stands for
    signals: Signals


def check_question(question: str, settings: Settings) -> str:
    question = question.strip()
    if not question:
        raise AssistantError("the question is empty")
    if len(question) > settings.max_question_chars:
        raise AssistantError(f"the question is {len(question)} characters, over the {settings.max_question_chars} limit")
    if any(ord(c) < 32 and c not in "\t\n" for c in question):
        raise AssistantError("the question contains control characters")
    return question


class Assistant:
    def __init__(self, settings: Settings, share: "Assistant | None" = None, memo: bool = False) -> None:
        """Loads everything; with `share`, reuses its models and index (they must not differ).

        With `memo` (and in every Assistant sharing this one), the model's work for a prompt it has
        already seen is reused, with the time it took then: the eval suite's configurations often
        pick the same evidence, and the same prompt gets the same answer."""
        self.settings = settings
        self._memo: dict | None = {} if memo else (share._memo if share else None)
        self.prompts = load_prompts(settings.prompts_dir)
        self.gate = load_gate(settings.gate_file) if settings.abstain_gate else None
        if share:
            self.embedder, self.index, self.ranker, self.llm = share.embedder, share.index, share.ranker, share.llm
            self.retriever = Retriever(self.index, self.embedder, settings)
            return
        # The model loads and reads the fixed head of every prompt (system turn and examples, ~2 s
        # on two cores) in llama.cpp, which releases the GIL, while this thread spends its seconds
        # importing torch, sentence-transformers, llama-index and chromadb.
        with ThreadPoolExecutor(max_workers=1) as pool:
            llm = pool.submit(_ready_model, settings, self.prompts)
            if settings.llm_url is not None:
                llm.result()  # a server that is not there fails before the slow load
            # The embedder before the index: a missing or broken model says so, rather than that
            # the index was built with another one.
            self.embedder = Embedder(settings.embedding_path(), settings.embed_batch_size)
            self.index = open_index(settings)
            self.retriever = Retriever(self.index, self.embedder, settings)
            self.ranker = SentenceRanker(self.index)
            self.llm = llm.result()

    def ask(self, question: str, on_text: OnText | None = None, doc_id: str | None = None) -> Answer:
        """Answer from every indexed document, or from `doc_id` alone."""
        return self.gated(self.ungated(question, on_text, doc_id))

    def reload(self) -> None:
        """Pick up documents indexed since this Assistant was made, keeping the loaded models."""
        self.index = open_index(self.settings)
        self.retriever = Retriever(self.index, self.embedder, self.settings)
        self.ranker = SentenceRanker(self.index)

    def ungated(self, question: str, on_text: OnText | None = None, doc_id: str | None = None) -> Answer:
        """The answer before the abstention gate, with the signals the gate reads."""
        began = time.perf_counter()
        question = check_question(question, self.settings)
        if doc_id is not None and doc_id not in self.index.documents:
            raise AssistantError(f"no document '{doc_id}' in the index; indexed: {', '.join(sorted(self.index.documents))}")
        vector = self.embedder.embed_query(question)
        passages = self.retriever.retrieve(question, vector, doc_id)
        ranked = self.ranker.rank(question, vector, passages)
        retrieved = time.perf_counter()
        evaluated = self.llm.evaluated
        draft, generate_s = self._draft(question, ranked, on_text) if ranked else (None, 0.0)
        checking = time.perf_counter()
        text, citations = NOT_IN_DOCUMENT, []
        if draft is not None:
            text, citations = verify(draft.text, draft.citations, self.index.documents)
        if not citations:
            text = NOT_IN_DOCUMENT
        timing = Timing(retrieved - began, generate_s, retrieved - began + generate_s + time.perf_counter() - checking)
        return Answer(question, text, not citations, tuple(citations), timing, tuple(ranked[:5]), tuple(passages),
                      draft.signals if draft else None, None, {"llm_tokens": self.llm.evaluated - evaluated})

    def gated(self, answer: Answer) -> Answer:
        return apply_gate(answer, self.gate)

    def prompt(self, question: str, ranked: list[Evidence]) -> tuple[list[dict[str, str]], str, list[Citation]]:
        """The chat turns for the best evidence, the passage in them, and what [1].. cite."""
        top = ranked[0]
        window = self.ranker.window(question, top)
        doc = self.index.documents[top.doc_id]
        passage = doc[window[0].start : window[-1].end]
        cited = [Citation(n, s.doc_id, s.start, s.end, s.text) for n, s in enumerate(window, start=1)]
        return messages(self.prompts, passage, question), passage, cited

    def _draft(self, question: str, ranked: list[Evidence], on_text: OnText | None) -> tuple[Draft | None, float]:
        """The answer before gating, and the seconds the model spent on it."""
        top = ranked[0]
        turns, passage, cited = self.prompt(question, ranked)
        margin = top.score - ranked[1].score if len(ranked) > 1 else top.score
        signals = Signals(top.cosine, top.coverage, margin, 0.0, 0.0)
        if self.settings.decoding == "span":
            if not isinstance(self.llm, LocalLLM):
                raise AssistantError("span decoding needs the local model; with --llm-url use --decoding free")
            prompt = self.llm.render(turns)
            key = ("span", prompt, self.settings.max_span_words, self.settings.max_span_starts)
            found, seconds = self._timed(key, lambda: extract(self.llm, prompt, passage, question,
                                                              self.settings.max_span_words, self.settings.max_span_starts))
            if found is None:
                return None, seconds
            if on_text:
                on_text(found.text)
            signals = replace(signals, span_logprob=found.logprob / (found.n_tokens + 1), typed=float(found.typed))
            return Draft(_with_markers(found.text, len(cited)), cited, signals), seconds
        key = ("free", json.dumps(turns), self.settings.max_answer_tokens)
        draft, seconds = self._timed(key, lambda: self._free(question, passage, cited, turns, signals, on_text))
        if draft is not None:  # a remembered draft keeps its text; the margin is this retrieval's
            draft = replace(draft, signals=replace(draft.signals, margin=margin))
        return draft, seconds

    def _timed(self, key: tuple, work: Callable[[], T]) -> tuple[T, float]:
        if self._memo is not None and key in self._memo:
            return self._memo[key]
        began = time.perf_counter()
        done = (work(), time.perf_counter() - began)
        if self._memo is not None:
            self._memo[key] = done
        return done

    def _free(self, question: str, passage: str, cited: list[Citation], turns: list[dict[str, str]],
              signals: Signals, on_text: OnText | None) -> Draft | None:
        generated = self.llm.chat(turns, self.settings.max_answer_tokens, on_text)
        text = generated.text
        said = content_stems(text)
        if not text or len(said - content_stems(passage)) * 2 > len(said):
            return None  # mostly words the evidence does not contain: invented, so withdrawn
        wanted = answer_type(question)
        typed = float(wanted is None or wanted(text, 0, len(text)))
        return Draft(_with_markers(text, len(cited)), cited,
                     replace(signals, span_logprob=generated.logprob, typed=typed))


def load_model(settings: Settings) -> ChatModel:
    """The server at settings.llm_url when set, else the local GGUF model."""
    if settings.llm_url is not None:
        from assistant.remote import RemoteLLM

        return RemoteLLM(str(settings.llm_url), settings.llm_model, settings.llm_api_key.get_secret_value(),
                         settings.server_timeout)
    return LocalLLM(settings.model_path(), settings.n_threads, settings.n_ctx, settings.step_threads)


def _ready_model(settings: Settings, prompts: PromptSet) -> ChatModel:
    """The model; a local one with the part of the prompt every question shares already evaluated."""
    llm = load_model(settings)
    if isinstance(llm, LocalLLM):
        # While the caller still imports the embedding stack, one thread: on two cores a second
        # one only slows those imports down, which take longer than this.
        llm.threads = 1 if "sentence_transformers" not in sys.modules else settings.n_threads
        llm.prime(llm.render(messages(prompts, "", "")))
        llm.threads = settings.n_threads
    return llm


def apply_gate(answer: Answer, gate: Gate | None) -> Answer:
    """Withdraw the answer when the calibrated gate says the document does not hold it."""
    if gate is None or answer.signals is None:
        return answer
    p = gate.p_answerable(answer.signals)
    if p >= gate.threshold:
        return replace(answer, p_answerable=p)
    return replace(answer, answer=NOT_IN_DOCUMENT, abstained=True, citations=(), p_answerable=p)


def _with_markers(text: str, n: int) -> str:
    """'Peskov', 2 -> 'Peskov [1] [2]'. Markers only come from here: a '[7]' the document (or the
    model) wrote is dropped, or verify() would read it as a citation."""
    return _capitalised(MARKER.sub("", text).strip()) + "".join(f" [{i}]" for i in range(1, n + 1))


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]
