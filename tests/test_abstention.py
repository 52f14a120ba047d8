"""The abstention gate: its file, its fit, and how it withdraws an answer."""

import json
import math

import numpy as np
import pytest

from assistant.abstention import FEATURES, NOT_IN_DOCUMENT, Gate, Signals, fit_gate, load_gate, save_gate
from assistant.answering import Assistant, apply_gate
from assistant.errors import AssistantError
from assistant.settings import Settings

CEASEFIRE = "How long a ceasefire did Trump call for?"
ZERO = (0.0,) * len(FEATURES)
ONE = (1.0,) * len(FEATURES)


def test_gate_file_round_trip(tmp_path):
    gate = Gate((0.5, -1.0, 2.0, 0.25, 1.5), -0.3, (0.1, 0.2, 0.3, -1.0, 0.5), (1.0, 2.0, 0.5, 0.4, 0.5), 0.42)
    path = tmp_path / "gate.json"
    save_gate(gate, path)
    assert json.loads(path.read_text())["features"] == list(FEATURES)
    assert load_gate(path) == gate


@pytest.mark.parametrize(
    "content",
    [None, "{not json", "{}", json.dumps({"features": ["cosine"], "weights": [1], "bias": 0, "mean": [0],
                                          "scale": [1], "threshold": 0.5})],
    ids=["missing", "not-json", "empty-object", "other-features"],
)
def test_unreadable_gate_file(tmp_path, content):
    path = tmp_path / "gate.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AssistantError) as info:
        load_gate(path)
    assert "assistant eval --calibrate" in str(info.value)


def test_p_answerable_is_the_logistic_of_standardised_signals():
    gate = Gate((1.0, 0.0, 0.0, 0.0, 0.0), 0.5, (0.2, 0, 0, 0, 0), (0.1, 1, 1, 1, 1))
    signals = Signals(cosine=0.4, coverage=1, margin=1, span_logprob=-1, typed=1)
    assert gate.p_answerable(signals) == pytest.approx(1 / (1 + math.exp(-(2.0 + 0.5))))


def test_fit_gate_separates_and_keeps_false_abstention_low():
    rng = np.random.default_rng(0)
    good = [Signals(0.6 + rng.normal(0, 0.05), 0.9, 0.3, -0.5, 1.0) for _ in range(40)]
    bad = [Signals(0.05 + rng.normal(0, 0.05), 0.2, 0.05, -2.0, 0.0) for _ in range(40)]
    gate = fit_gate(good + bad, [True] * 40 + [False] * 40, max_false_abstention=0.05)
    kept = [gate.p_answerable(s) >= gate.threshold for s in good]
    withdrawn = [gate.p_answerable(s) < gate.threshold for s in bad]
    assert sum(kept) >= 38  # at most 5% of answerable items abstain
    assert all(withdrawn)


def test_gate_that_rejects_withdraws_a_real_answer(answer_of):
    answer = answer_of(CEASEFIRE)
    assert answer.signals is not None and answer.citations
    gated = apply_gate(answer, Gate(ZERO, -5.0, ZERO, ONE, 0.5))
    assert gated.abstained and gated.answer == NOT_IN_DOCUMENT and gated.citations == ()
    assert gated.p_answerable == pytest.approx(1 / (1 + math.exp(5.0)))
    assert gated.question == answer.question and gated.timing == answer.timing


def test_gate_that_accepts_keeps_the_answer(answer_of):
    answer = answer_of(CEASEFIRE)
    kept = apply_gate(answer, Gate(ZERO, 5.0, ZERO, ONE, 0.5))
    assert (kept.answer, kept.citations, kept.abstained) == (answer.answer, answer.citations, False)
    assert kept.p_answerable == pytest.approx(1 / (1 + math.exp(-5.0)))
    assert apply_gate(answer, None) is answer


def test_assistant_reads_its_gate_file(tmp_path, index_dir, ungated):
    path = tmp_path / "never.json"
    save_gate(Gate(ZERO, -5.0, ZERO, ONE, 0.5), path)
    strict = Assistant(Settings(index_dir=index_dir, gate_file=path), share=ungated)
    result = strict.ask(CEASEFIRE)
    assert result.to_json()["answer"] == NOT_IN_DOCUMENT and result.to_json()["citations"] == []
    assert result.abstained and result.p_answerable < 0.5


def test_assistant_with_an_unreadable_gate_file(tmp_path, index_dir, ungated):
    with pytest.raises(AssistantError, match="calibrate"):
        Assistant(Settings(index_dir=index_dir, gate_file=tmp_path / "missing.json"), share=ungated)
