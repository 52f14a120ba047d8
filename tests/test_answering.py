"""The whole pipeline on the bundled article: exact citations, the JSON shape, abstention, bad questions."""

import json
import re

import pytest

from assistant.abstention import NOT_IN_DOCUMENT
from assistant.answering import check_question
from assistant.citations import markers
from assistant.errors import AssistantError

PESKOV = "Who is Putin's spokesperson?"
CEASEFIRE = "How long a ceasefire did Trump call for?"
PARADE = "Where will Putin oversee a parade on May 9th?"
UNANSWERABLE = "What is the boiling point of mercury in Kelvin?"
QUESTIONS = [PESKOV, CEASEFIRE, PARADE]


@pytest.mark.parametrize("question", QUESTIONS)
def test_answer_cites_exact_spans(ungated, answer_of, question):
    result = answer_of(question)
    documents = ungated.index.documents
    assert not result.abstained and result.citations
    for c in result.citations:
        assert documents[c.doc][c.start : c.end] == c.text
        # Citations are whole sentences of the index.
        assert any((s.doc_id, s.start, s.end) == (c.doc, c.start, c.end) for s in ungated.index.sentences)


@pytest.mark.parametrize("question", QUESTIONS)
def test_no_phantom_markers(answer_of, question):
    result = answer_of(question)
    numbers = [c.n for c in result.citations]
    assert numbers == list(range(1, len(numbers) + 1))
    assert markers(result.answer)
    assert set(markers(result.answer)) == set(numbers)


@pytest.mark.parametrize("question", QUESTIONS)
def test_span_decoding_copies_the_answer_from_the_cited_text(ungated, answer_of, question):
    result = answer_of(question)
    words = re.sub(r"\s*\[\d+\]", "", result.answer).strip()
    assert words and len(words.split()) <= ungated.settings.max_span_words
    first, last = result.citations[0], result.citations[-1]
    cited = ungated.index.documents[first.doc][first.start : last.end]
    assert words.lower() in cited.lower()


def test_spokesperson(answer_of):
    result = answer_of(PESKOV)
    assert "Peskov" in result.answer
    assert any("Peskov" in c.text for c in result.citations)


def test_ceasefire_length(answer_of):
    result = answer_of(CEASEFIRE)
    assert "thirty-day" in result.answer.lower()
    assert any("thirty-day ceasefire" in c.text for c in result.citations)


def test_json_shape(answer_of):
    data = answer_of(PESKOV).to_json()
    assert json.loads(json.dumps(data, ensure_ascii=False)) == data
    assert list(data) == ["question", "answer", "abstained", "citations", "timing"]
    assert data["question"] == PESKOV
    assert isinstance(data["answer"], str) and data["abstained"] is False
    assert data["citations"]
    for c in data["citations"]:
        assert list(c) == ["n", "doc", "start", "end", "text"]
        assert [type(c[k]) for k in c] == [int, str, int, int, str]
    timing = data["timing"]
    assert list(timing) == ["retrieve_s", "generate_s", "total_s"]
    assert all(isinstance(v, float) and v >= 0 for v in timing.values())
    assert timing["total_s"] >= timing["retrieve_s"] + timing["generate_s"] - 1e-3
    assert timing["total_s"] > 0


def test_question_is_stripped_before_checks(settings):
    assert check_question("  Who is Peskov?\n", settings) == "Who is Peskov?"
    assert check_question("Who\tis Peskov?", settings) == "Who\tis Peskov?"  # tabs are not control noise


def test_unanswerable_question_abstains(gated):
    """Default settings: the calibrated gate in assistant/gate.json must withdraw the answer."""
    assert gated.gate is not None
    result = gated.ask(UNANSWERABLE)
    assert result.abstained is True
    assert result.answer == NOT_IN_DOCUMENT == "The document does not say."
    assert result.citations == ()
    data = result.to_json()
    assert (data["answer"], data["abstained"], data["citations"]) == ("The document does not say.", True, [])


@pytest.mark.parametrize(
    "question, says",
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("x" * 2001, "2001 characters"),
        ("Who is\x00 Peskov?", "control characters"),
        ("Who is \x1b[31mPeskov?", "control characters"),
        ("Who\ris Peskov?", "control characters"),
    ],
    ids=["empty", "whitespace", "too-long", "nul", "escape", "carriage-return"],
)
def test_bad_questions_are_refused(ungated, question, says):
    evaluated = ungated.llm.evaluated
    with pytest.raises(AssistantError) as info:
        ungated.ask(question)
    assert says in str(info.value)
    assert ungated.llm.evaluated == evaluated  # refused before the model ran


def test_question_at_the_length_limit_is_accepted(settings):
    question = "Who " + "x" * (settings.max_question_chars - 4)
    assert len(question) == 2000
    assert check_question(question, settings) == question



def test_span_search_scores_at_most_max_starts_start_words(ungated, monkeypatch):
    """The cap bounds the slowest answers; it visits the best-bounded starts first, so a cap the
    search does not reach changes nothing."""
    from assistant.extraction import extract
    from assistant.prompting import messages

    llm = ungated.llm
    evidence = ("The ferry from Greymouth to Sabel Bay was rebuilt in 1931, painted green by the harbour trust, "
                "and sold to a museum after the storm of 1954.")
    question = "Why did the mayor resign?"  # nothing answers it: the search has no early winner
    prompt = llm.render(messages(ungated.prompts, evidence, question))
    calls = []
    score = llm.score_continuations
    monkeypatch.setattr(llm, "score_continuations", lambda *args: calls.append(args) or score(*args))
    visited = []
    for cap in (0, 2, 100):
        calls.clear()
        found = extract(llm, prompt, evidence, question, 8, max_starts=cap)
        visited.append((len(calls), found))
    (all_starts, uncapped), (two, _), (hundred, unreached) = visited
    assert all_starts > 2 and two == 2
    assert hundred == all_starts and unreached == uncapped
