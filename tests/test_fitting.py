"""What `assistant fit` is made of: which span counts as right, which questions are drawn, the
logistic fit and the choice of a gate's threshold. Synthetic data; the whole command on real
questions is in test_cli.py."""

import numpy as np
import pytest

from assistant.tools.evaluation import Item
from assistant.tools.fitting import Example, Outcome, choose_threshold, fit_linear, right_span, sample, scores


@pytest.mark.parametrize(("text", "right"), [
    ("Edict of Nantes", True),
    ("the Edict of Nantes in 1598", True),  # three more words at most
    ("“Edict of Nantes,”", True),  # case and punctuation folded
    ("the EDICT of nantes", True),
    ("the famous Edict of Nantes signed in 1598", False),  # four more
    ("Edict of", False),  # part of the answer is not the answer
    ("Nantes", False),
    ("Edicts of Nantes", False),  # whole words only
])
def test_right_span(text, right):
    assert right_span(text, ("Edict of Nantes", "the Edict")) is right


def test_right_span_without_answers():
    assert right_span("anything at all", ()) is False
    assert right_span("anything at all", ("",)) is False  # an empty accepted answer matches nothing


def items(per_doc: dict[str | None, int]) -> list[Item]:
    """Items of each document, interleaved in file order."""
    out = []
    for k in range(max(per_doc.values())):
        for doc, n in per_doc.items():
            if k < n:
                out.append(Item(f"{doc}-{k}", f"Question {k} on {doc}?", ("x",), "", "person", "all", doc))
    return out


def counts(chosen: list[Item]) -> dict:
    found: dict = {}
    for i in chosen:
        found[i.doc_id] = found.get(i.doc_id, 0) + 1
    return found


def test_sample_caps_each_document_the_same_every_time_in_file_order():
    pool = items({"a.txt": 10, "b.txt": 3, "c.txt": 6})
    chosen = sample(pool, 4)
    assert counts(chosen) == {"a.txt": 4, "b.txt": 3, "c.txt": 4}
    assert chosen == sample(pool, 4)  # the same draw every time
    assert chosen == [i for i in pool if i in chosen]  # in file order
    assert sample(pool, None) == pool
    assert sample(pool, 100) == pool


def test_sample_seeds_differ():
    pool = items({"a.txt": 200})
    assert sample(pool, 5, seed=0) != sample(pool, 5, seed=1)


def test_sample_per_set_shares_the_limit_among_documents():
    pool = items({"a.txt": 10, "b.txt": 10, "c.txt": 10})
    chosen = sample(pool, 7, per_set=True)
    assert len(chosen) == 7 and counts(chosen) == {"a.txt": 3, "b.txt": 2, "c.txt": 2}
    assert chosen == sample(pool, 7, per_set=True)
    assert sample(pool, 30, per_set=True) == pool  # no more than the set holds: all of it
    # A set that names no document is one document.
    plain = items({None: 12})
    assert len(sample(plain, 5, per_set=True)) == 5 and len(sample(plain, 5)) == 5


def test_fit_linear_separates_a_separable_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, size=(200, 3))
    x[:, 2] = 4.0  # a constant column: scaled by 1, not divided by zero
    y = x[:, 0] - 0.5 * x[:, 1] > 0
    x[y, 0] += 0.5  # a margin
    model = fit_linear(x, y, ("a", "b", "constant"), c=100.0)
    assert model.features == ("a", "b", "constant")
    assert model.scale[2] == 1.0 and model.mean[2] == pytest.approx(4.0)
    logits = model.logits(x)
    assert logits.shape == (200,)
    assert np.array_equal(logits > 0, y)
    assert model.weights[0] > 0 > model.weights[1]
    assert model.threshold == 0.5
    # The same from a saved copy: the weights are the whole model.
    again = type(model).model_validate_json(model.model_dump_json())
    np.testing.assert_allclose(again.logits(x), logits)


def example(answerable: bool) -> Example:
    kind = "person" if answerable else "unanswerable"
    item = Item("i", "Who?", ("x",) if answerable else (), "", kind, "all")
    return Example(item, "doc", None, np.zeros((0, 1)), np.zeros(0, dtype=bool))


# Three answerable questions (all answered right when answered) and four that are not.
ANSWERABLE_P = [0.905, 0.855, 0.355]
UNANSWERABLE_P = [0.605, 0.505, 0.405, 0.205]


def gate_data() -> tuple[list[Example], list[Outcome], np.ndarray]:
    examples = [example(True) for _ in ANSWERABLE_P] + [example(False) for _ in UNANSWERABLE_P]
    found = [Outcome({}, True, True) for _ in ANSWERABLE_P] + [Outcome({}, False, False) for _ in UNANSWERABLE_P]
    return examples, found, np.array(ANSWERABLE_P + UNANSWERABLE_P)


def test_choose_threshold_takes_the_most_right_outcomes_within_the_false_abstention_cap():
    examples, found, p = gate_data()
    # Free to abstain on one answerable question: above 0.605 it gets 2 answers and 4 abstentions right.
    threshold, got = choose_threshold(examples, found, p, max_false_abstention=0.5)
    assert 0.605 < threshold <= 0.855
    assert got["overall"] == pytest.approx(6 / 7) and got["false_abstention"] == pytest.approx(1 / 3)
    assert got == scores(examples, found, p, threshold)
    # Never to abstain on one: it must answer at 0.355, and the best it can do there is 4 of 7.
    threshold, got = choose_threshold(examples, found, p, max_false_abstention=0.0)
    assert 0.205 < threshold <= 0.355
    assert got["false_abstention"] == 0.0 and got["overall"] == pytest.approx(4 / 7)
    assert got["accuracy"] == 1.0 and got["abstention"] == pytest.approx(1 / 4)


def test_choose_threshold_when_no_threshold_meets_the_cap():
    examples, found, p = gate_data()
    p[0] = np.nan  # a question with no candidate is never answered
    threshold, got = choose_threshold(examples, found, p, max_false_abstention=0.0)
    assert threshold == 0.0 and got["false_abstention"] == pytest.approx(1 / 3)
