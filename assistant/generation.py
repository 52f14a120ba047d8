"""The local language model: score copied spans, or generate freely.

Reaches llama.cpp only through `llamacpp.Engine`. Also the small `ChatModel` interface free
decoding needs, which a server model (`remote.py`) implements too. Does not choose evidence or
check citations. Works with any chat GGUF: the prompt is rendered with the model's own chat
template, and the end of an answer is the model's end-of-turn token. Only the template's own text
may hold special tokens: a document or question that contains "<|im_start|>" is tokenized as
those characters, never as the control token.
"""

import itertools
import sys
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from assistant.errors import AssistantError
from assistant.fitted import file_sha256
from assistant.llamacpp import Engine
from assistant.prompting import PromptSet, messages

if TYPE_CHECKING:
    from assistant.settings import Settings

SMALL_STEP = 16  # tokens; a step this short runs on `step_threads`
PARALLEL = 64  # sequences one decode may hold: continuations scored side by side after one prompt

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Prompt:
    """A rendered chat prompt in parts: the template's own text, where special tokens are meant,
    and the messages' contents, which are always tokenized as plain text."""

    parts: tuple[tuple[str, bool], ...]  # (text, True if it comes from the template)

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.parts)


@dataclass(frozen=True)
class SpanScore:
    """Log-probability that the model answers exactly `text[:end]` and then stops."""

    end: int
    logprob: float
    n_tokens: int
    eot: float  # the end-of-turn token's part of `logprob`


@dataclass(frozen=True)
class Generated:
    text: str  # stripped


class ChatModel(Protocol):
    """What free decoding needs of a model: a greedy answer to chat turns."""

    name: str
    evaluated: int  # tokens run through the model so far, for tokens/s

    def chat(self, messages: list[dict[str, str]], max_tokens: int,
             on_text: Callable[[str], None] | None = None) -> Generated: ...


ANSWER_ROOM = 64  # tokens kept free after a prompt for the answer and its scoring


class LocalLLM:
    def __init__(self, path: Path, n_threads: int, n_ctx: int, step_threads: int = 0) -> None:
        if not path.is_file():
            raise AssistantError(f"no model file at {path}; run 'make install' or pass --model PATH.gguf")
        self.engine = Engine(path, n_ctx=n_ctx, n_threads=n_threads, sequences=PARALLEL)
        self.name = path.name
        self.threads = n_threads  # for long batches (prompts); may be changed between calls
        self.step_threads = step_threads or n_threads
        self.evaluated = 0  # tokens run through the model, for tokens/s
        self.eot = self.engine.end_of_turn()
        self._template = self.engine.chat_template(CHATML)

    def render(self, messages: list[dict[str, str]]) -> Prompt:
        """The chat template applied to `messages`, keeping apart what the template wrote and what
        the messages said: each content goes through the template as a unique slot, then back in."""
        mark = f"\ue000{secrets.token_hex(8)}"
        slots = [{**m, "content": f"{mark}{i}\ue001"} for i, m in enumerate(messages)]
        pieces = re.split(f"{mark}(\\d+)\ue001", self._template(slots))
        parts = [(messages[int(p)]["content"], False) if k % 2 else (p, True) for k, p in enumerate(pieces)]
        return Prompt(tuple((text, special) for text, special in parts if text))

    def tokens(self, text: str, special: bool = False) -> list[int]:
        return self.engine.tokenize(text, special=special)

    def prompt_tokens(self, prompt: Prompt) -> list[int]:
        return [t for text, special in prompt.parts for t in self.tokens(text, special=special)]

    def prime(self, prompt: Prompt) -> int:
        """Evaluate `prompt`, reusing whatever prefix is already in the KV cache; returns its length."""
        ids, engine = self.prompt_tokens(prompt), self.engine
        if len(ids) + ANSWER_ROOM > engine.n_ctx:
            raise AssistantError(
                f"the prompt ({len(ids)} tokens) and room for the answer ({ANSWER_ROOM}) do not fit the "
                f"{engine.n_ctx}-token context; raise ASSISTANT_N_CTX or ask a shorter question")
        cached = engine.past()
        same = 0
        while same < min(len(cached), len(ids)) and cached[same] == ids[same]:
            same += 1
        if same == len(ids) and not engine.has_logits(same - 1):
            same = 0  # cached, but evaluated without its logits (only as part of a longer prompt)
        engine.rewind(same)
        if same < len(ids):
            self._eval(ids[same:], every=False)
        # else the logits after the last prompt token are still there: re-running that token
        # alone would take llama.cpp's one-token path, whose logits differ from the batched ones.
        return len(ids)

    def score_many(self, base: int, pieces: list[tuple[str, list[int]]]) -> list[list[SpanScore]]:
        """After a primed prompt of `base` tokens, for each (text, ends): the scores of answering
        `text[:end]` then stopping, for every char offset in `ends` that falls on a token boundary
        (others are skipped). Many continuations per decode: each is a sequence of its own that
        shares the prompt's cache, so one pass of the model scores them all."""
        tokenized = [self._token_boundaries(text) for text, _ in pieces]
        first = self.engine.logits(base - 1, base)
        out: list[list[SpanScore]] = []
        for group in _groups([len(ids) for ids, _ in tokenized], self.engine.n_batch, PARALLEL - 1):
            rows = self._decode_side_by_side(base, [tokenized[i][0] for i in group])
            for i, after in zip(group, rows):
                ids, boundaries = tokenized[i]
                opening = _row_logprobs(first, np.array([[ids[0] if ids else self.eot, self.eot]]))
                chosen = np.vstack([opening, after])  # row k: token k's and end-of-turn's log-probability
                out.append(_span_scores(chosen[:, 0], chosen[:, 1], boundaries, pieces[i][1]))
        return out

    def _decode_side_by_side(self, base: int, sequences: list[list[int]]) -> list[np.ndarray]:
        """For each sequence continuing the first `base` tokens of the cache, evaluated together in
        one decode: after each of its tokens, the log-probability of its next token and of ending
        the turn (a row per token; the last row's next token is end-of-turn)."""
        n = sum(map(len, sequences))
        self.evaluated += n
        self.engine.set_threads(self.step_threads if n < SMALL_STEP else self.threads)
        picks = np.array([[t, self.eot] for ids in sequences for t in [*ids[1:], self.eot]])
        with self.engine.side_by_side(base, sequences) as logits:
            logprobs = _row_logprobs(logits, picks)
        bounds = np.cumsum([0] + [len(ids) for ids in sequences])
        return [logprobs[a:b] for a, b in itertools.pairwise(bounds)]

    def _token_boundaries(self, text: str) -> tuple[list[int], dict[int, int]]:
        """Token ids of `text` and, for each char offset where a token ends, how many tokens precede it."""
        ids = self.tokens(text)
        boundaries, nbytes, raw = {}, 0, text.encode()
        for k, t in enumerate(ids, start=1):
            nbytes += len(self.engine.detokenize([t]))
            boundaries[len(raw[:nbytes].decode(errors="ignore"))] = k
        return ids, boundaries

    def _eval(self, ids: list[int], every: bool = True) -> None:
        """Run `ids` through the model (see `Engine.eval`), a short step on `step_threads`: the
        logits do not depend on the thread count (checked in the tests), only the speed does."""
        self.evaluated += len(ids)
        self.engine.set_threads(self.step_threads if len(ids) < SMALL_STEP else self.threads)
        self.engine.eval(ids, every=every)

    def first_token_logprobs(self, base: int) -> np.ndarray:
        return _log_softmax(self.engine.logits(base - 1, base))[0]

    def chat(self, messages: list[dict[str, str]], max_tokens: int,
             on_text: Callable[[str], None] | None = None) -> Generated:
        pieces = []
        for piece in self.generate(self.render(messages), max_tokens):
            pieces.append(piece)
            if on_text:
                on_text(piece)
        return Generated("".join(pieces).strip())

    def generate(self, prompt: Prompt, max_tokens: int) -> Iterator[str]:
        """Greedy decoding of an answer, yielding text pieces as they come."""
        engine = self.engine
        engine.rewind(self.prime(prompt))
        produced: list[int] = []
        while True:
            token = int(np.argmax(engine.logits(engine.n_past - 1, engine.n_past)[0]))
            if token in (self.eot, engine.eos) or len(produced) == max_tokens:
                return
            produced.append(token)
            yield engine.detokenize([token], prev=produced[:-1]).decode(errors="ignore")
            self._eval([token], every=False)


def _groups(lengths: list[int], max_tokens: int, max_sequences: int) -> Iterator[list[int]]:
    """Indices of `lengths` in runs whose lengths add up to at most `max_tokens`."""
    group: list[int] = []
    total = 0
    for i, n in enumerate(lengths):
        if group and (total + n > max_tokens or len(group) == max_sequences):
            yield group
            group, total = [], 0
        group.append(i)
        total += n
    if group:
        yield group


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def _row_logprobs(logits: np.ndarray, picks: np.ndarray, block: int = 64) -> np.ndarray:
    """The log-probabilities of the token ids `picks[r]` in each row `r` of `logits`, normalised a
    block of rows at a time in float32 (rounding ~1e-6 nats): a float64 log-softmax of every row at
    once takes hundreds of MB for a long batch and a tenth of a second a question."""
    out = np.empty(picks.shape, dtype=np.float64)
    for at in range(0, len(logits), block):
        rows = np.asarray(logits[at : at + block], dtype=np.float32)
        top = rows.max(axis=1, keepdims=True)
        total = np.log(np.exp(rows - top).sum(axis=1, keepdims=True, dtype=np.float64))
        out[at : at + block] = np.take_along_axis(rows, picks[at : at + block], axis=1) - top - total
    return out


def _span_scores(taken: np.ndarray, ended: np.ndarray, boundaries: dict[int, int], ends: list[int]) -> list[SpanScore]:
    """Scores of stopping after each char offset in `ends` that falls on a token boundary, from each
    token's log-probability (`taken[k]`: token k) and end-of-turn's (`ended[k]`: after k tokens)."""
    total = np.cumsum(taken)
    return [SpanScore(end, float(total[k - 1] + ended[k]), k, float(ended[k]))
            for end in ends if (k := boundaries.get(end)) is not None]


def load_model(settings: "Settings") -> ChatModel:
    """The server at settings.llm_url when set, else the local GGUF model."""
    if settings.llm_url is not None:
        from assistant.remote import RemoteLLM

        return RemoteLLM(str(settings.llm_url), settings.llm_model, settings.llm_api_key.get_secret_value(),
                         settings.server_timeout)
    return LocalLLM(settings.model_path(), settings.n_threads, settings.n_ctx, settings.step_threads)


def ready_model(settings: "Settings", prompts: PromptSet) -> ChatModel:
    """The model; a local one with the part of the prompt every question shares already evaluated,
    and its file's hash taken (the fitted ranker is checked against it)."""
    llm = load_model(settings)
    if isinstance(llm, LocalLLM):
        # While the caller still imports the embedding stack, one thread: on two cores a second
        # one only slows those imports down, which take longer than this.
        llm.threads = 1 if "sentence_transformers" not in sys.modules else settings.n_threads
        llm.prime(llm.render(messages(prompts, "", "")))
        llm.threads = settings.n_threads
        file_sha256(settings.model_path())
    return llm
