"""The one place that reaches into llama-cpp-python: its private attributes and its low-level C API.

Does: load a GGUF with a context that holds many sequences, tokenize, evaluate tokens keeping some
or all of their logits, rewind, set threads, and decode several continuations of a cached prefix
in one batch. Refuses any llama-cpp-python but the version these internals were read from.
Does not: choose prompts, score spans or decode answers (`generation.py` does, through this).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from assistant.errors import AssistantError

SUPPORTED = "0.3.36"  # llama-cpp-python whose private attributes this module was written against
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")  # chat formats' end-of-turn tokens


def check_version() -> None:
    """Private attributes change without notice between releases: refuse any other version
    rather than read the wrong buffer."""
    import llama_cpp

    if llama_cpp.__version__ != SUPPORTED:
        raise AssistantError(
            f"llama-cpp-python {llama_cpp.__version__} is installed, but this assistant needs {SUPPORTED}; "
            "run 'make install'")


class Engine:
    """A `llama_cpp.Llama` whose context holds up to `sequences` sequences sharing one KV cache."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int, sequences: int) -> None:
        check_version()
        from llama_cpp import Llama

        try:
            self._llm = Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, n_batch=512,
                logits_all=True, verbose=False,
            )
            self._allow_sequences(sequences)
        except (ValueError, RuntimeError) as e:
            raise AssistantError(f"cannot load model {path}: {e}") from None
        self._threads = n_threads  # as the context was made with
        self._has_logits = np.zeros(n_ctx, dtype=bool)  # which rows of the logits buffer are current

    def _allow_sequences(self, sequences: int) -> None:
        """Llama makes its context for one sequence; decoding continuations side by side needs
        many sharing one cache (kv_unified), so the context is made again with those parameters."""
        from llama_cpp import _internals

        llm = self._llm
        params = llm.context_params
        params.n_seq_max, params.kv_unified = sequences, True
        llm._ctx.close()
        llm._ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)

    @property
    def n_ctx(self) -> int:
        return self._llm.n_ctx()

    @property
    def n_batch(self) -> int:
        return self._llm.n_batch

    @property
    def eos(self) -> int:
        return self._llm.token_eos()

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        """Never a BOS token: prompts are tokenized in parts and joined."""
        return self._llm.tokenize(text.encode(), add_bos=False, special=special)

    def detokenize(self, ids: list[int], prev: list[int] | None = None) -> bytes:
        return self._llm.detokenize(ids, prev_tokens=prev)

    def end_of_turn(self) -> int:
        """The token that ends an answer: the chat format's own if the vocabulary has one, else EOS."""
        for text in END_OF_TURN:
            ids = self.tokenize(text, special=True)
            if len(ids) == 1:
                return ids[0]
        return self.eos

    def chat_template(self, fallback: str) -> Callable[[list[dict[str, str]]], str]:
        """The model's chat template (or `fallback`) as a function of the messages, ending with the
        assistant's turn opened."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = self._llm

        def token_text(token: int) -> str:
            return llm._model.token_get_text(token) if token >= 0 else ""

        template = llm.metadata.get("tokenizer.chat_template", fallback)
        # Any: it reads plain role/content dicts, though typed for OpenAI's message classes
        formatter: Any = Jinja2ChatFormatter(template, eos_token=token_text(llm.token_eos()),
                                             bos_token=token_text(llm.token_bos()))
        return lambda messages: formatter(messages=messages).prompt

    @property
    def n_past(self) -> int:
        """Tokens evaluated so far, and in the cache."""
        return self._llm.n_tokens

    def past(self) -> list[int]:
        return self._llm.input_ids[: self._llm.n_tokens].tolist()

    def rewind(self, n: int) -> None:
        """Forget all but the first `n` evaluated tokens; the next `eval` overwrites the rest of the cache."""
        self._llm.n_tokens = n

    def has_logits(self, row: int) -> bool:
        """Whether `logits(row, row + 1)` holds the logits after token `row`, not stale ones."""
        return bool(self._has_logits[row])

    def logits(self, start: int, stop: int) -> np.ndarray:
        """Rows `start:stop` of the logits buffer (a view): row k is the logits after token k."""
        return self._llm.scores[start:stop]

    def eval(self, ids: list[int], every: bool = True) -> None:
        """Run `ids` after the past tokens, keeping the logits after every token, or (`every=False`)
        after the last only: the output layer then runs for one row instead of all, ~12% of a
        prompt's time, and that row is identical to the full path's."""
        llm, at = self._llm, self._llm.n_tokens
        self._has_logits[at:] = False
        if every:
            llm.eval(ids)
            self._has_logits[at : llm.n_tokens] = True
            return
        llm._logits_all = False  # Llama.eval then asks llama.cpp for the last token's logits only
        try:
            llm.eval(ids)
        finally:
            llm._logits_all = True
        llm.scores[llm.n_tokens - 1, :] = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        self._has_logits[llm.n_tokens - 1] = True

    def set_threads(self, n: int) -> None:
        """Threads for both one-token steps and batches from now on; a no-op if unchanged."""
        if n != self._threads:
            import llama_cpp

            llama_cpp.llama_set_n_threads(self._llm.ctx, n, n)
            self._threads = n

    @contextmanager
    def side_by_side(self, base: int, sequences: list[list[int]]) -> Iterator[np.ndarray]:
        """Decode each of `sequences` as a continuation of the first `base` past tokens, all in one
        batch, each a sequence of its own that shares their cache. Yields the logits after every
        token, sequence after sequence (valid only inside the block); afterwards the cache holds
        the `base` tokens alone."""
        from llama_cpp import _internals

        self.rewind(base)
        ctx = self._llm._ctx
        ctx.kv_cache_seq_rm(0, base, -1)
        batch = _internals.LlamaBatch(n_tokens=sum(map(len, sequences)), embd=0, n_seq_max=1, verbose=False)
        try:
            for seq, ids in enumerate(sequences, start=1):
                ctx.kv_cache_seq_cp(0, seq, 0, base)
                _add_sequence(batch.batch, seq, ids, base)
            ctx.decode(batch)
            yield np.ctypeslib.as_array(ctx.get_logits(), shape=(batch.batch.n_tokens, self._llm.n_vocab()))
        finally:
            for seq in range(1, len(sequences) + 1):
                ctx.kv_cache_seq_rm(seq, -1, -1)
            batch.close()


def _add_sequence(raw: Any, seq: int, ids: list[int], base: int) -> None:
    """Append `ids` to the llama_batch `raw` as sequence `seq` from position `base`, logits for every token."""
    for j, token in enumerate(ids):
        k = raw.n_tokens
        raw.token[k], raw.pos[k], raw.n_seq_id[k], raw.logits[k] = token, base + j, 1, True
        raw.seq_id[k][0] = seq
        raw.n_tokens += 1
