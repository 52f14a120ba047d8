"""The whole pipeline: exact citations, the JSON shape, abstention, bad questions, the span search.

Questions about the bundled article come from its dev split (or say the same in other words); the
test split is never asserted on. Named answers are checked on a made-up document (conftest.TOWN).
"""

import json
import re

import numpy as np
import pytest

from conftest import TOWN, TOWN_QUESTIONS

from assistant.abstention import NOT_IN_DOCUMENT
from assistant.answering import Assistant
from assistant.loading import check_question
from assistant.citations import MARKER, markers
from assistant.errors import AssistantError
from assistant.fitted import Linear
from assistant.ranking import START_FEATURES
from assistant.reading import MAX_ANSWER_TOKENS
from assistant.settings import Settings

GRAHAM = "Who said that Putin is trying to walk a thin line?"  # dev: q041
CEASEFIRE = "How long a ceasefire did Trump call for?"  # dev: q011, in other words
PARADE = "Where will Putin oversee a parade on May 9th?"  # dev: q001 and q031
UNANSWERABLE = "What is the boiling point of mercury in Kelvin?"
QUESTIONS = [GRAHAM, CEASEFIRE, PARADE]


@pytest.mark.parametrize("question", QUESTIONS)
def test_answer_cites_exact_spans(ungated, answer_of, question):
    result = answer_of(question)
    documents = ungated.index.documents
    assert not result.abstained and result.citations
    for c in result.citations:
        assert documents[c.doc_id][c.start : c.end] == c.text
        # Citations are whole sentences of the index.
        assert any((s.doc_id, s.start, s.end) == (c.doc_id, c.start, c.end) for s in ungated.index.sentences)


@pytest.mark.parametrize("question", QUESTIONS)
def test_no_phantom_markers(answer_of, question):
    result = answer_of(question)
    numbers = [c.n for c in result.citations]
    assert numbers == list(range(1, len(numbers) + 1))
    assert markers(result.answer)
    assert set(markers(result.answer)) == set(numbers)


@pytest.mark.parametrize("question", QUESTIONS)
def test_the_answer_is_copied_from_the_cited_text(ungated, answer_of, question):
    result = answer_of(question)
    words = re.sub(r"\s*\[\d+\]", "", result.answer).strip()
    assert words and len(words.split()) <= MAX_ANSWER_TOKENS  # the reader's longest span, in word pieces
    first, last = result.citations[0], result.citations[-1]
    cited = ungated.index.documents[first.doc_id][first.start : last.end]
    assert words.lower() in cited.lower()


@pytest.mark.parametrize("question", QUESTIONS)
def test_the_answer_span_is_the_copied_text_inside_the_citations(ungated, answer_of, question):
    result = answer_of(question)
    span = result.answer_span
    assert span is not None and span.doc_id == result.citations[0].doc_id
    copied = ungated.index.documents[span.doc_id][span.start : span.end]
    assert MARKER.sub("", result.answer).strip() == copied[:1].upper() + copied[1:]
    assert result.citations[0].start <= span.start < span.end <= result.citations[-1].end
    assert all(c.start < span.end and span.start < c.end for c in result.citations)  # each one holds part of it


@pytest.fixture(scope="module")
def town(town_index, ungated):
    """The made-up document's own index, answered with the session's models, without the gate."""
    return Assistant(Settings(index_dir=town_index, abstain_gate=False), share=ungated)


@pytest.mark.parametrize(("question", "expected"), TOWN_QUESTIONS)
def test_answers_from_a_made_up_document(town, question, expected):
    result = town.ask(question)
    assert not result.abstained and result.citations
    span = result.answer_span
    assert span.doc_id == "town.txt" and TOWN[span.start : span.end].lower() in result.answer.lower()
    assert any(c.start <= span.start and span.end <= c.end for c in result.citations)
    for c in result.citations:
        assert c.doc_id == "town.txt" and TOWN[c.start : c.end] == c.text
    assert expected in result.answer
    assert len(MARKER.sub("", result.answer).split()) <= town.settings.max_span_words


def test_answering_from_one_document(town):
    result = town.ask(TOWN_QUESTIONS[0][0], doc_id="town.txt")
    assert {c.doc_id for c in result.citations} == {"town.txt"}
    with pytest.raises(AssistantError, match="no document 'gone.txt' in the index; indexed: town.txt"):
        town.ask(TOWN_QUESTIONS[0][0], doc_id="gone.txt")


def test_ceasefire_length(answer_of):
    result = answer_of(CEASEFIRE)
    assert "thirty-day" in result.answer.lower()
    assert any("thirty-day ceasefire" in c.text for c in result.citations)


def test_json_shape(answer_of, article):
    data = answer_of(CEASEFIRE).to_json()
    assert json.loads(json.dumps(data, ensure_ascii=False)) == data
    assert list(data) == ["question", "answer", "abstained", "citations", "answer_span", "timing"]
    assert data["question"] == CEASEFIRE
    assert isinstance(data["answer"], str) and data["abstained"] is False
    assert data["citations"]
    for c in data["citations"]:
        assert list(c) == ["n", "doc", "start", "end", "text"]
        assert [type(c[k]) for k in c] == [int, str, int, int, str]
    span = data["answer_span"]
    assert list(span) == ["doc", "start", "end"] and [type(span[k]) for k in span] == [str, int, int]
    assert article[span["start"] : span["end"]].lower() in data["answer"].lower()
    timing = data["timing"]
    assert list(timing) == ["retrieve_s", "generate_s", "total_s"]
    assert all(isinstance(v, float) and v >= 0 for v in timing.values())
    assert timing["total_s"] >= timing["retrieve_s"] + timing["generate_s"] - 1e-3
    assert timing["total_s"] > 0


def test_question_is_stripped_before_checks(settings):
    assert check_question("  Who is Peskov?\n", settings) == "Who is Peskov?"
    assert check_question("Who\tis Peskov?", settings) == "Who\tis Peskov?"  # tabs are not control noise


def test_unanswerable_question_abstains(gated):
    """Default settings: the reader's fitted gate must withdraw the answer."""
    assert gated.reader_gate is not None and gated.settings.abstain_gate
    result = gated.ask(UNANSWERABLE)
    assert result.abstained is True
    assert result.answer == NOT_IN_DOCUMENT == "The document does not say."
    assert result.citations == () and result.answer_span is None
    assert result.p_answerable is not None and result.p_answerable < gated.reader_gate.gate.threshold
    data = result.to_json()
    assert (data["answer"], data["abstained"], data["citations"], data["answer_span"]) == (
        "The document does not say.", True, [], None)


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


@pytest.fixture
def counted(weightless, monkeypatch) -> list[int]:
    """How many pieces each call of the model's batched span scoring was given."""
    calls: list[int] = []
    score = weightless.llm.score_many
    monkeypatch.setattr(weightless.llm, "score_many",
                        lambda base, pieces: calls.append(len(pieces)) or score(base, pieces))
    return calls


@pytest.mark.slow
def test_span_search_scores_at_most_max_span_starts_start_words(index_dir, weightless, counted):
    """Every start word is found from the prompts alone; whole spans are scored only from the
    `max_span_starts` ranked highest (without a start ranker, as `assistant fit` measures: the
    likeliest first tokens), all of them in one batch; 0 scores them all."""
    found = {}
    for cap in (0, 2, 100):
        settings = Settings(index_dir=index_dir, abstain_gate=False, max_span_starts=cap, decoding="span")
        counted.clear()
        found[cap] = Assistant(settings, share=weightless, unfitted=True).measure(CEASEFIRE)
        assert len(counted) == 1
        starts = found[cap].spans.starts
        assert len(starts) > 2 and found[cap].spans.start_features.shape == (len(starts), len(START_FEATURES))
        assert counted[0] == (min(cap, len(starts)) or len(starts))
    everything, two, hundred = found[0], found[2], found[100]
    assert {c.start for c in everything.spans.candidates} == set(everything.spans.starts)
    likeliest = sorted(two.spans.starts, key=lambda x: -x.first)[:2]
    assert {c.start for c in two.spans.candidates} == set(likeliest)
    assert {c.start for c in hundred.spans.candidates} == set(everything.spans.starts)  # a cap not reached
    # The same start's spans score the same whichever other starts share its batch.
    scored = {(c.start, c.scores.end): c.scores for c in everything.spans.candidates}
    for c in two.spans.candidates:
        assert c.scores.logprob == pytest.approx(scored[(c.start, c.scores.end)].logprob, abs=0.5)
        assert c.text == c.window.text[c.scores.start : c.scores.end]
        assert c.scores.end - c.start.offset in [e - c.start.offset for e in c.start.ends]


def test_a_start_ranker_chooses_which_starts_are_scored(index_dir, weightless, counted):
    settings = Settings(index_dir=index_dir, abstain_gate=False, max_span_starts=3, decoding="span")
    measuring = Assistant(settings, share=weightless, unfitted=True)
    n = len(START_FEATURES)
    by_pmi = Linear(features=START_FEATURES, weights=tuple(float(f == "pmi") for f in START_FEATURES), bias=0.0,
                    mean=(0.0,) * n, scale=(1.0,) * n)
    measured = measuring.measure(CEASEFIRE, starter=by_pmi)
    starts = measured.spans.starts
    best = sorted(starts, key=lambda x: -(x.first - x.cf_first))[:3]
    assert {c.start for c in measured.spans.candidates} == set(best)
    pmi = measured.spans.start_features[:, START_FEATURES.index("pmi")]
    score_of = dict(zip(starts, pmi))
    np.testing.assert_allclose(measured.spans.start_scores, [score_of[c.start] for c in measured.spans.candidates])
    # Start words only (the first pass of `assistant fit`): the model scores no span.
    counted.clear()
    only = measuring.measure(CEASEFIRE, spans=False)
    assert counted == [] and only.spans.candidates == () and only.spans.starts == starts


def test_evidence_windows(weightless):
    """Candidate spans come from the windows around the best `evidence_windows` sentences, best first."""
    measured = weightless.measure(CEASEFIRE, doc_id="article.txt")
    assert measured.windows and {w.doc_id for w in measured.windows} == {"article.txt"}
    assert len(measured.windows) == weightless.settings.evidence_windows
    assert [w.rank for w in measured.windows] == list(range(len(measured.windows)))
    assert all(measured.windows[0].score >= w.score for w in measured.windows)
