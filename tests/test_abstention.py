"""The fitted file (refused with another model, other prompts or other features), the signals the
gates read, and how a gate withdraws an answer. Nothing here depends on the fitted weights'
values: fitted files are written by the tests (conftest.write_fitted)."""

import json
import math

import numpy as np
import pytest

from conftest import write_fitted, write_reader_gate

from assistant.abstention import (EVIDENCE_FEATURES, GATE_FEATURES, NOT_IN_DOCUMENT, READER_FEATURES, answer_signals,
                                  evidence_signals, p_answerable)
from assistant.answering import FEATURES, Answer, Assistant, Timing, apply_gate
from assistant.citations import Citation
from assistant.errors import AssistantError
from assistant.evidence import Window
from assistant.extraction import SpanScores, Start
from assistant.fitted import FORMAT, Fitted, Linear, load_fitted
from assistant.lexicon import content_stems
from assistant.prompting import load_prompts
from assistant.ranking import Candidate, read_question
from assistant.settings import Settings
from assistant.spans import Span

CEASEFIRE = "How long a ceasefire did Trump call for?"  # the dev split's q011, in other words


@pytest.fixture(scope="module")
def model():
    return Settings().model_path()


@pytest.fixture(scope="module")
def digest():
    return load_prompts(Settings().prompts_dir).digest


@pytest.fixture
def fitted_file(tmp_path):
    return write_fitted(tmp_path / "fitted.json", Settings(), gate=1.5)


def edited(path, change) -> None:
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_fitted_file_round_trip(fitted_file, model, digest):
    loaded = load_fitted(fitted_file, model, digest, FEATURES)
    assert loaded == Fitted.model_validate_json(fitted_file.read_text())
    assert loaded.format == FORMAT and loaded.gate.bias == 1.5 and loaded.gate.features == GATE_FEATURES
    assert loaded.fitted_with.model == model.name
    assert {name: getattr(loaded, name).features for name in FEATURES} == FEATURES


@pytest.mark.parametrize("content", [None, "{not json", "{}", "[]"],
                         ids=["missing", "not-json", "empty-object", "a-list"])
def test_unreadable_fitted_file(tmp_path, model, digest, content):
    path = tmp_path / "fitted.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AssistantError) as info:
        load_fitted(path, model, digest, FEATURES)
    assert str(path) in str(info.value) and "assistant fit" in str(info.value)


def test_fitted_file_of_another_format(fitted_file, model, digest):
    edited(fitted_file, lambda raw: raw.update(format=FORMAT + 1))
    with pytest.raises(AssistantError, match=f"format {FORMAT + 1}.*assistant fit"):
        load_fitted(fitted_file, model, digest, FEATURES)


def test_fitted_for_another_model(fitted_file, model, digest, tmp_path):
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF another model")
    with pytest.raises(AssistantError) as info:
        load_fitted(fitted_file, other, digest, FEATURES)
    said = str(info.value)
    assert f"fitted for {model.name}" in said and "not for other.gguf" in said
    assert f"assistant fit --decoding span --model {other}" in said
    edited(fitted_file, lambda raw: raw["fitted_with"].update(model_sha256="0" * 64))
    with pytest.raises(AssistantError, match="sha256 000000000000.*assistant fit"):
        load_fitted(fitted_file, model, digest, FEATURES)


def test_fitted_with_other_prompts(fitted_file, model, digest):
    with pytest.raises(AssistantError, match="other prompts.*assistant fit"):
        load_fitted(fitted_file, model, "f" * 64, FEATURES)


@pytest.mark.parametrize("part", list(FEATURES))
def test_fitted_with_other_features(fitted_file, model, digest, part):
    def drop_last(raw):
        for key in ("features", "weights", "mean", "scale"):
            raw[part][key] = raw[part][key][:-1]

    edited(fitted_file, drop_last)
    with pytest.raises(AssistantError, match=f"other {part} features.*assistant fit"):
        load_fitted(fitted_file, model, digest, FEATURES)


def test_a_server_model_checks_only_the_evidence_gate(fitted_file, digest):
    """A server answers by free decoding: no span is scored, so only the evidence gate is read,
    and no model file can be checked."""
    edited(fitted_file, lambda raw: raw["fitted_with"].update(model_sha256="0" * 64))
    loaded = load_fitted(fitted_file, None, digest, {"evidence_gate": EVIDENCE_FEATURES})
    assert loaded.evidence_gate.features == EVIDENCE_FEATURES
    assert load_fitted(fitted_file, None, "f" * 64, {"evidence_gate": EVIDENCE_FEATURES}) == loaded  # nor prompts
    with pytest.raises(AssistantError, match="pass --fit-file"):
        load_fitted(fitted_file.with_name("missing.json"), None, digest, {"evidence_gate": EVIDENCE_FEATURES})


def test_assistant_refuses_a_missing_or_mismatched_fitted_file(tmp_path, index_dir, weightless):
    with pytest.raises(AssistantError, match="no fitted ranker and gate at .*missing.json; run 'assistant fit"):
        Assistant(Settings(index_dir=index_dir, fit_file=tmp_path / "missing.json", decoding="span"),
                  share=weightless)
    other = write_fitted(tmp_path / "other.json", Settings())
    edited(other, lambda raw: raw["fitted_with"].update(prompts_sha256="0" * 64))
    with pytest.raises(AssistantError, match="other prompts.*assistant fit"):
        Assistant(Settings(index_dir=index_dir, fit_file=other, decoding="span"), share=weightless)
    # Free decoding without a gate reads no fitted file at all; measuring for `assistant fit` neither.
    free = Assistant(Settings(index_dir=index_dir, fit_file=tmp_path / "missing.json", decoding="free",
                              abstain_gate=False), share=weightless)
    assert free.fitted is None
    assert Assistant(Settings(index_dir=index_dir, fit_file=tmp_path / "missing.json", decoding="span"),
                     share=weightless, unfitted=True).fitted is None


def test_assistant_refuses_a_missing_or_mismatched_reader_gate(tmp_path, index_dir, weightless):
    with pytest.raises(AssistantError, match="no fitted reader gate at .*missing.json; run 'assistant fit"):
        Assistant(Settings(index_dir=index_dir, fit_file=tmp_path / "missing.json"), share=weightless)
    other = write_reader_gate(tmp_path / "other.json", Settings())
    edited(other, lambda raw: raw.update(reader_sha256="0" * 64))
    with pytest.raises(AssistantError, match="was fitted for the reader reader.onnx .*assistant fit"):
        Assistant(Settings(index_dir=index_dir, fit_file=other), share=weightless)
    other = write_reader_gate(tmp_path / "other.json", Settings())
    edited(other, lambda raw: raw["gate"].update(features=[*raw["gate"]["features"][:-1], "renamed"]))
    with pytest.raises(AssistantError, match="other features"):
        Assistant(Settings(index_dir=index_dir, fit_file=other), share=weightless)
    # Without the gate, or measuring for `assistant fit`, no gate is read.
    assert Assistant(Settings(index_dir=index_dir, fit_file=tmp_path / "missing.json", abstain_gate=False),
                     share=weightless).reader_gate is None


def gate_over(features: tuple[str, ...], weights, bias, mean, scale, threshold=0.5) -> Linear:
    return Linear(features=features, weights=tuple(weights), bias=bias, mean=tuple(mean), scale=tuple(scale),
                  threshold=threshold)


def test_p_answerable_is_the_logistic_of_standardised_signals():
    gate = gate_over(("cosine", "coverage"), (1.0, -2.0), 0.5, (0.2, 0.5), (0.1, 0.25))
    signals = {"coverage": 1.0, "cosine": 0.4, "unused": 7.0}  # by name; others are ignored
    assert p_answerable(gate, signals) == pytest.approx(1 / (1 + math.exp(-(2.0 - 4.0 + 0.5))))
    with pytest.raises(KeyError):
        p_answerable(gate, {"cosine": 0.4})


def test_a_signal_that_could_not_be_measured_counts_as_average():
    gate = gate_over(("cosine", "best_eot"), (0.5, 2.0), 0.1, (0.4, -0.8), (1.0, 1.0))
    missing = p_answerable(gate, {"cosine": 0.6, "best_eot": float("nan")})
    assert missing == pytest.approx(p_answerable(gate, {"cosine": 0.6, "best_eot": -0.8}))
    assert missing != pytest.approx(p_answerable(gate, {"cosine": 0.6, "best_eot": -3.0}))


def window(text: str, rank: int = 0, score: float = 1.0, start: int = 0) -> Window:
    return Window("town.txt", start, start + len(text), text, rank, score, 0.6, 0.5, ())


def test_evidence_signals():
    top = window("The mayor, Owen Tallis, was elected in 2019 after the flood.", score=1.25)
    windows = [top, window("The bakery sells rye bread.", rank=1, score=1.0, start=100)]
    weights = dict.fromkeys(content_stems(top.text + " " + windows[1].text), 1.0)
    plain = evidence_signals(read_question("When was the mayor elected?"), windows, weights)
    assert list(plain) == list(EVIDENCE_FEATURES)
    assert plain["cosine"] == 0.6 and plain["coverage"] == 0.5 and plain["evidence_margin"] == pytest.approx(0.25)
    assert plain["missing_document"] == plain["missing_window"] == plain["missing_weighted"] == 0.0
    assert plain["names_missing"] == plain["numbers_missing"] == plain["negation_unmatched"] == 0.0
    changed = evidence_signals(read_question("When was Harriet Vance not elected mayor in 2020?"), windows, weights)
    assert changed["names_missing"] == 1.0 and changed["numbers_missing"] == 1.0
    assert changed["negation_unmatched"] == 1.0
    assert changed["missing_window"] > 0 and changed["missing_document"] <= changed["missing_window"]
    # A word the document never uses weighs more than any it does.
    assert changed["missing_weighted"] > changed["missing_window"]
    alone = evidence_signals(read_question("When was the mayor elected?"), [top], weights)
    assert alone["evidence_margin"] == 1.25  # no second window: the score itself


def test_missing_words_are_weighed_by_their_rarity():
    """A missing word counts by its weight (inverse sentence frequency): a rare one more than a common one."""
    top = window("The mayor sells rye bread.")
    question = read_question("Does the mayor bake bread?")
    weights = {"mayor": 1.0, "bread": 3.0, "sell": 1.0, "rye": 3.0, "bake": 3.0}
    got = evidence_signals(question, [top], weights)
    assert got["missing_window"] == pytest.approx(1 / 3)  # 'bake', of 'mayor', 'bake' and 'bread'
    assert got["missing_document"] == 0.0
    assert got["missing_weighted"] == pytest.approx(3.0 / (1.0 + 3.0 + 3.0))


def test_answer_signals_compare_the_chosen_span_with_rivals_elsewhere():
    text = "The mayor, Owen Tallis, was elected in 2019."
    top = Window("town.txt", 0, len(text), text, 0, 1.0, 0.6, 0.5, (Span("town.txt", 0, len(text), text),))
    owen, year = top.text.index("Owen"), top.text.index("2019")
    start = Start(0, owen, (owen + 4, owen + 11), -1.0, -2.5)
    name = Candidate(top, start, SpanScores(0, owen, owen + 11, 3, -2.0, -0.5))
    first = Candidate(top, start, SpanScores(0, owen, owen + 4, 1, -3.0, -2.0))  # overlaps the chosen span
    other = Candidate(top, Start(0, year, (year + 4,), -4.0, -4.0), SpanScores(0, year, year + 4, 2, -4.5, -1.0))
    question = read_question("Who was elected mayor?")
    evidence = {"cosine": 0.6}
    weights = dict.fromkeys(content_stems(top.text), 1.0)
    logits = np.array([2.0, 1.5, -1.0])
    got = answer_signals(question, [name, first, other], logits, 0, evidence, weights)
    assert set(got) == {"cosine"} | (set(GATE_FEATURES) - set(EVIDENCE_FEATURES))  # the evidence signals as given
    assert got["best"] == 2.0
    assert got["margin"] == 3.0  # against 2019, not against the span inside the chosen one
    assert got["share"] == pytest.approx(1 / (1 + math.exp(-0.5) + math.exp(-3.0)))
    assert got["best_logprob_per_token"] == pytest.approx(-0.5) and got["best_eot"] == -0.5
    assert got["best_pmi"] == 1.5 and got["best_window"] == 0.0 and got["wanted_shown"] == 1.0
    assert got["log_candidates"] == pytest.approx(math.log(3))
    assert got["best_missing_weighted"] == 0.0  # the chosen span's sentence holds every word of the question
    rarer = answer_signals(read_question("Who was elected mayor after the flood?"), [name, first, other], logits, 0,
                           evidence, {**weights, "flood": 5.0})
    # 'flood' (5) of it, 'elect', 'mayor'
    assert rarer["best_missing_weighted"] == pytest.approx(5.0 / (5.0 + 1.0 + 1.0))
    alone = answer_signals(question, [name], np.array([2.0]), 0, evidence, weights)
    assert alone["margin"] == 10.0 and alone["share"] == 1.0


def handmade_answer() -> Answer:
    cited = Citation("town.txt", 0, 20, "The mayor, Owen Tal.", 1)
    return Answer("Who?", "Owen Tallis [1]", False, (cited,), Timing(0.1, 0.2, 0.3),
                  signals={"cosine": 0.9}, answer_span=Span("town.txt", 11, 22, "Owen Tallis"))


def test_a_gate_that_rejects_withdraws_the_answer():
    answer = handmade_answer()
    gate = gate_over(("cosine",), (0.0,), -5.0, (0.0,), (1.0,))
    withdrawn = apply_gate(answer, gate)
    assert withdrawn.abstained and withdrawn.answer == NOT_IN_DOCUMENT and withdrawn.citations == ()
    assert withdrawn.answer_span is None
    assert withdrawn.p_answerable == pytest.approx(1 / (1 + math.exp(5.0)))
    assert (withdrawn.question, withdrawn.timing, withdrawn.signals) == (answer.question, answer.timing, answer.signals)


def test_a_gate_that_accepts_keeps_the_answer():
    answer = handmade_answer()
    kept = apply_gate(answer, gate_over(("cosine",), (0.0,), 5.0, (0.0,), (1.0,)))
    assert (kept.answer, kept.citations, kept.abstained, kept.answer_span) == (
        answer.answer, answer.citations, False, answer.answer_span)
    assert kept.p_answerable == pytest.approx(1 / (1 + math.exp(-5.0)))
    # The threshold is the gate's own: the same probability withdraws under a stricter one.
    assert apply_gate(answer, gate_over(("cosine",), (0.0,), 5.0, (0.0,), (1.0,), threshold=0.999)).abstained
    assert apply_gate(answer, None) is answer
    no_signals = Answer("Who?", NOT_IN_DOCUMENT, True, (), answer.timing)
    assert apply_gate(no_signals, gate_over(("cosine",), (0.0,), -5.0, (0.0,), (1.0,))) is no_signals


@pytest.mark.slow
def test_assistant_reads_its_fitted_gate(tmp_path, index_dir, weightless):
    """The same answer, kept by a gate that always answers and withdrawn by one that never does."""
    never_file = write_fitted(tmp_path / "never.json", Settings(), gate=-5.0)
    always_file = write_fitted(tmp_path / "always.json", Settings(), gate=5.0)
    never = Assistant(Settings(index_dir=index_dir, decoding="span", fit_file=never_file), share=weightless)
    always = Assistant(Settings(index_dir=index_dir, decoding="span", fit_file=always_file), share=weightless)
    kept = always.ask(CEASEFIRE)
    assert not kept.abstained and kept.citations and kept.answer_span is not None
    assert kept.p_answerable == pytest.approx(1 / (1 + math.exp(-5.0)))
    assert set(kept.signals) == set(GATE_FEATURES)
    result = never.ask(CEASEFIRE)
    assert result.to_json()["answer"] == NOT_IN_DOCUMENT and result.to_json()["citations"] == []
    assert result.to_json()["answer_span"] is None
    assert result.abstained and result.p_answerable < 0.5
    assert never.ungated(CEASEFIRE).answer == kept.answer  # the gate alone withdrew it


def test_assistant_reads_the_reader_gate(tmp_path, index_dir, weightless):
    """The reader's answer, kept by a gate that always answers and withdrawn by one that never does."""
    never = Assistant(Settings(index_dir=index_dir, fit_file=write_reader_gate(tmp_path / "never.json", Settings(),
                                                                              -5.0)), share=weightless)
    always_gate = write_reader_gate(tmp_path / "always.json", Settings(), 5.0)
    always = Assistant(Settings(index_dir=index_dir, fit_file=always_gate), share=weightless)
    kept = always.ask(CEASEFIRE)
    assert not kept.abstained and kept.citations and kept.answer_span is not None
    assert set(kept.signals) == set(READER_FEATURES)
    result = never.ask(CEASEFIRE)
    assert result.abstained and result.answer == NOT_IN_DOCUMENT and result.answer_span is None
    assert never.ungated(CEASEFIRE).answer == kept.answer  # the gate alone withdrew it


def test_free_decoding_is_gated_on_the_evidence_alone(tmp_path, index_dir, weightless):
    path = write_fitted(tmp_path / "free.json", Settings(), gate=5.0, evidence_gate=-5.0)
    free = Assistant(Settings(index_dir=index_dir, fit_file=path, decoding="free"), share=weightless)
    result = free.ask(CEASEFIRE)
    assert result.abstained and result.p_answerable == pytest.approx(1 / (1 + math.exp(5.0)))
    assert set(result.signals) == set(EVIDENCE_FEATURES)
