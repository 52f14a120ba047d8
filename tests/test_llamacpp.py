"""The llama.cpp adapter on the real packaged model (SmolLM2-135M): version check, tokens, evaluation,
rewinding, threads, and continuations decoded side by side after a shared prefix."""

import llama_cpp
import numpy as np
import pytest

from assistant.errors import AssistantError
from assistant.llamacpp import SUPPORTED, Engine, check_version
from assistant.settings import packaged_model_path

PREFIX = "Cats sleep sixteen hours a day, said Dr. Ann Lee, a vet in Leeds. Asked how long cats sleep, she said"
CONTINUATIONS = [" sixteen hours a day", " that they sleep a lot more than dogs do", " no"]  # the last: one token
SAME = 1e-2  # logits of the same tokens in batches of the same layout: rounding at most
BATCHED = 0.5  # log-probability: rows placed elsewhere in a batch may run other kernels (measured up to 0.32)
LIKELY = -10.0  # log-probability: tokens compared between batch layouts; the rare tail differs more


@pytest.fixture(scope="module")
def engine() -> Engine:
    path = packaged_model_path()
    assert path is not None, "the packaged model is missing; run 'make install'"
    return Engine(path, n_ctx=512, n_threads=2, sequences=8)


def test_refuses_another_llama_cpp_version(monkeypatch):
    check_version()  # the installed one is the supported one
    monkeypatch.setattr(llama_cpp, "__version__", "0.3.35")
    message = rf"llama-cpp-python 0\.3\.35 is installed, but this assistant needs {SUPPORTED}"
    with pytest.raises(AssistantError, match=message):
        check_version()
    with pytest.raises(AssistantError, match=message):
        Engine(packaged_model_path(), n_ctx=512, n_threads=1, sequences=2)


def test_a_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(AssistantError, match="cannot load model"):
        Engine(path, n_ctx=512, n_threads=1, sequences=2)


def test_tokens_round_trip(engine):
    text = "Dr. Ann Lee — a vet in Leeds, naïve “quotes” and 16 hours."
    ids = engine.tokenize(text)
    assert engine.detokenize(ids) == text.encode()
    assert b"".join(engine.detokenize([t]) for t in ids) == text.encode()
    assert engine.detokenize(ids[3:4], prev=ids[:3]).decode() in text


def test_control_tokens_only_when_asked(engine):
    assert engine.tokenize("<|im_end|>", special=True) == [engine.end_of_turn()]
    assert len(engine.tokenize("<|im_end|>")) > 1  # as plain characters


def test_chat_template_opens_the_answer(engine):
    render = engine.chat_template("unused: the model has its own")
    text = render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert "<|im_start|>user\nHi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_evaluate_and_rewind(engine):
    ids = engine.tokenize(PREFIX)
    engine.rewind(0)
    engine.eval(ids)
    assert engine.n_past == len(ids) and engine.past() == ids
    assert all(engine.has_logits(k) for k in range(len(ids)))
    every = engine.logits(0, len(ids)).copy()
    engine.rewind(5)
    assert engine.n_past == 5 and engine.past() == ids[:5]
    engine.eval(ids[5:], every=False)  # the cache after the first 5 tokens is reused
    assert engine.past() == ids
    assert [engine.has_logits(k) for k in range(len(ids))] == [k < 5 for k in range(len(ids) - 1)] + [True]
    np.testing.assert_allclose(engine.logits(len(ids) - 1, len(ids)), every[-1:], atol=SAME)


def test_side_by_side_gives_each_sequence_its_full_evaluation(engine):
    prefix = engine.tokenize(PREFIX)
    sequences = [engine.tokenize(text) for text in CONTINUATIONS]
    assert len(sequences[-1]) == 1
    engine.rewind(0)
    engine.eval(prefix, every=False)
    with engine.side_by_side(len(prefix), sequences) as logits:
        batched = logits.copy()
    assert engine.n_past == len(prefix) and engine.past() == prefix  # the continuations left no trace
    assert len(batched) == sum(map(len, sequences))
    at = 0
    for ids in sequences:
        engine.rewind(0)
        engine.eval(prefix + ids)
        alone = log_softmax(engine.logits(len(prefix), len(prefix) + len(ids)))
        together = log_softmax(batched[at : at + len(ids)])
        assert (together.argmax(axis=1) == alone.argmax(axis=1)).all()
        likely = alone > LIKELY
        np.testing.assert_allclose(together[likely], alone[likely], atol=BATCHED)
        at += len(ids)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def last_logits(engine: Engine, ids: list[int]) -> np.ndarray:
    """The logits after the last of `ids`, evaluated from scratch."""
    engine.rewind(0)
    engine.eval(ids, every=False)
    return engine.logits(len(ids) - 1, len(ids))[0].copy()


def test_side_by_side_leaves_the_prefix_cache_usable(engine):
    prefix = engine.tokenize(PREFIX)
    more = engine.tokenize(" sixteen hours")
    expected = last_logits(engine, prefix + more)
    engine.rewind(0)
    engine.eval(prefix, every=False)
    with engine.side_by_side(len(prefix), [engine.tokenize(t) for t in CONTINUATIONS]):
        pass
    engine.eval(more, every=False)
    np.testing.assert_allclose(engine.logits(engine.n_past - 1, engine.n_past)[0], expected, atol=SAME)


def test_thread_count_changes_no_logits(engine):
    """Threads are a choice of speed, never of answer: a prompt and a short step after it give the
    same logits, bit for bit, on one thread as on two."""
    ids = engine.tokenize(PREFIX)
    seen = []
    try:
        for threads in (1, 2, 1):
            engine.set_threads(threads)
            prompt = last_logits(engine, ids)
            engine.rewind(len(ids) - 3)
            engine.eval(ids[-3:])
            seen.append((prompt, engine.logits(len(ids) - 1, len(ids))[0].copy()))
    finally:
        engine.set_threads(2)
    for prompt, step in seen[1:]:
        np.testing.assert_array_equal(prompt, seen[0][0])
        np.testing.assert_array_equal(step, seen[0][1])
