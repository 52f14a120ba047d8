"""What the ranker reads: the kind of answer a question asks for, what a span shows, and the
feature rows of start words and candidate spans. Pure code: no model, no index, no fitted weights.
The questions and passages are made up here; none is about the bundled article."""

import math

import numpy as np
import pytest

from assistant.evidence import Window
from assistant.extraction import SpanScores, Start
from assistant.lexicon import words
from assistant.ranking import (KINDS, SPAN_FEATURES, START_FEATURES, Candidate, question_kind, read_question,
                               span_features, span_properties, start_features, wanted_shown)


@pytest.mark.parametrize(("question", "kind"), [
    ("Who painted the barn?", "person"),
    ("Whose hat was left on the ferry?", "person"),
    ("When did the ferry sink?", "date"),
    ("What year did the school open?", "date"),
    ("In what year was the mill rebuilt?", "date"),
    ("How many goats live on the farm?", "number"),
    ("How long is the stone bridge?", "number"),
    ("What percentage of voters stayed home?", "number"),
    ("In which city was the baker born?", "place"),
    ("Where is the lighthouse?", "place"),
    ("What kind of town is Larkspur Hollow?", "place"),  # a filler noun is skipped
    ("Which company built the mill?", "organisation"),
    ("Which newspaper printed the story?", "organisation"),
    ("Why did the mayor resign?", "reason"),
    ("How did the cat get out of the shed?", "manner"),
    ("What did the dog eat?", "other"),
    ("Name the baker.", "other"),
])
def test_question_kind(question, kind):
    assert kind in KINDS
    assert question_kind(words(question)) == kind
    assert read_question(question).kind == kind


def test_read_question_finds_names_numbers_and_negation():
    q = read_question("Why didn't Ann Lee visit Oslo in 1998?")
    assert q.text == "Why didn't Ann Lee visit Oslo in 1998?"
    assert q.names == {"ann", "lee", "oslo"}  # the capital that opens the question is no name
    assert q.numbers == {"1998"}
    assert q.negated
    assert {"visit", "oslo", "1998"} <= q.stems
    plain = read_question("Who opened the mill in spring?")
    assert not plain.negated and plain.names == frozenset() and plain.numbers == frozenset()


TEXT = "The mayor, Ann Lee, opened it in 1998. It cost twelve pounds."


def at(part: str) -> tuple[int, int]:
    start = TEXT.index(part)
    return start, start + len(part)


@pytest.mark.parametrize(("part", "shows"), [
    ("Ann Lee", {"number": False, "date": False, "name": True, "lower": False}),
    ("The mayor", {"number": False, "date": False, "name": False, "lower": False}),  # opens the sentence
    ("It cost", {"number": False, "date": False, "name": False, "lower": False}),  # opens the second one
    ("1998", {"number": True, "date": True, "name": False, "lower": True}),
    ("twelve pounds", {"number": True, "date": False, "name": False, "lower": True}),
    ("opened it", {"number": False, "date": False, "name": False, "lower": True}),
    ("mayor, Ann Lee", {"number": False, "date": False, "name": True, "lower": False}),
])
def test_span_properties(part, shows):
    assert span_properties(TEXT, *at(part)) == shows


def window(text: str, rank: int, score: float = 1.0) -> Window:
    return Window("made-up.txt", 100 * rank, 100 * rank + len(text), text, rank, score, 0.5, 0.75, ())


def test_start_features_one_row_per_start_with_the_named_columns():
    question = read_question("Who opened the mill in 1998?")
    windows = [window(TEXT, 0, score=1.5), window("Bread is sold by Ida Brook.", 1, score=1.0)]
    starts = [Start(0, TEXT.index("Ann"), (TEXT.index("Ann") + 3, TEXT.index("Ann") + 7), -1.0, -3.0),
              Start(0, TEXT.index("twelve"), (TEXT.index("twelve") + 6,), -4.0, -4.5),
              Start(1, 17, (20, 26), -2.0, -2.0)]
    rows = start_features(question, windows, starts)
    assert rows.shape == (3, len(START_FEATURES)) and rows.dtype == np.float64
    col = {name: rows[:, i] for i, name in enumerate(START_FEATURES)}
    np.testing.assert_allclose(col["first"], [-1.0, -4.0, -2.0])
    np.testing.assert_allclose(col["pmi"], [2.0, 0.5, 0.0])
    np.testing.assert_allclose(col["first_rel"], [0.0, -3.0, -1.0])  # against the likeliest start
    np.testing.assert_allclose(col["pmi_rel"], [0.0, -1.5, -2.0])
    np.testing.assert_allclose(col["window0"], [1, 1, 0])
    np.testing.assert_allclose(col["window1"], [0, 0, 1])
    np.testing.assert_allclose(col["score_gap"], [0.0, 0.0, 0.5])
    np.testing.assert_allclose(col["is_name"], [1, 0, 1])
    np.testing.assert_allclose(col["person_name"], [1, 0, 1])  # a "who" question and a name
    np.testing.assert_allclose(col["is_number"], [0, 1, 0])
    np.testing.assert_allclose(col["number_number"], [0, 0, 0])  # not a "how many" question
    np.testing.assert_allclose(col["clause_start"], [1, 0, 0])  # "Ann" follows a comma
    np.testing.assert_allclose(col["question_word"], [0, 0, 0])
    # 'opened' is two words after 'Ann'; window 1 holds no word of the question, as far as it gets
    np.testing.assert_allclose(col["near"], [math.log1p(2), col["near"][1], math.log1p(20)])
    np.testing.assert_allclose(col["adjacent"], [0, 0, 0])
    assert start_features(question, windows, []).shape == (0, len(START_FEATURES))


def test_span_features_one_row_per_candidate_with_the_named_columns():
    question = read_question("Who opened the mill in 1998?")
    windows = [window(TEXT, 0)]
    ann = TEXT.index("Ann")
    start = Start(0, ann, (ann + 3, ann + 7), -1.0, -3.0)
    short = Candidate(windows[0], start, SpanScores(0, ann, ann + 3, 1, -2.0, -1.5))
    whole = Candidate(windows[0], start, SpanScores(0, ann, ann + 7, 2, -1.2, -0.4))
    assert (whole.text, whole.span.start, whole.span.end) == ("Ann Lee", ann, ann + 7)
    rows = span_features(question, [short, whole], np.array([0.3, 0.3]))
    assert rows.shape == (2, len(SPAN_FEATURES)) and rows.dtype == np.float64
    col = {name: rows[:, i] for i, name in enumerate(SPAN_FEATURES)}
    np.testing.assert_allclose(col["logprob"], [-2.0, -1.2])
    np.testing.assert_allclose(col["logprob_rel"], [-0.8, 0.0])
    np.testing.assert_allclose(col["logprob_per_token"], [-1.0, -0.4])
    np.testing.assert_allclose(col["eot"], [-1.5, -0.4])
    np.testing.assert_allclose(col["rest"], [-2.0 + 1.0 + 1.5, -1.2 + 1.0 + 0.4])  # neither the first token nor the end
    np.testing.assert_allclose(col["words"], [1, 2])
    np.testing.assert_allclose(col["log_tokens"], [0.0, math.log(2)])
    np.testing.assert_allclose(col["start_score_rel"], [0.0, 0.0])
    np.testing.assert_allclose(col["clause_end"], [0, 1])  # "Ann Lee" is followed by a comma
    np.testing.assert_allclose(col["person_name"], [1, 1])
    assert span_features(question, [], np.zeros(0)).shape == (0, len(SPAN_FEATURES))
    assert wanted_shown(question, whole) == 1.0
    twelve = TEXT.index("twelve")
    number = Candidate(windows[0], Start(0, twelve, (twelve + 6,), -3.0, -3.0),
                       SpanScores(0, twelve, twelve + 6, 1, -3.0, -1.0))
    assert wanted_shown(question, number) == 0.0  # a "who" question wants a name
    assert wanted_shown(read_question("Why did the mill close?"), number) == 1.0  # wants nothing in particular


def test_feature_names_are_unique():
    assert len(set(START_FEATURES)) == len(START_FEATURES)
    assert len(set(SPAN_FEATURES)) == len(SPAN_FEATURES)
