"""verify() keeps only citations that are exact spans and leaves no marker without one."""

from assistant.citations import Citation, markers, verify

DOCS = {
    "a.txt": "Cats sleep sixteen hours a day. Dogs bark at night.",
    "b.md": "# Birds\n\nBirds sing at dawn.",
}
CATS = Citation("a.txt", 0, 31, "Cats sleep sixteen hours a day.", 1)
DOGS = Citation("a.txt", 32, 51, "Dogs bark at night.", 2)
BIRDS = Citation("b.md", 9, 28, "Birds sing at dawn.", 3)


def assert_consistent(text: str, kept: list[Citation]) -> None:
    """No phantom markers; numbers are 1..k; every citation is an exact span and is used."""
    assert [c.n for c in kept] == list(range(1, len(kept) + 1))
    assert set(markers(text)) == {c.n for c in kept}
    for c in kept:
        assert DOCS[c.doc_id][c.start : c.end] == c.text


def test_fixture_spans_are_exact():
    for c in (CATS, DOGS, BIRDS):
        assert DOCS[c.doc_id][c.start : c.end] == c.text


def test_exact_citations_are_kept_unchanged():
    text, kept = verify("Sixteen hours [1] and at night [2].", [CATS, DOGS], DOCS)
    assert text == "Sixteen hours [1] and at night [2]."
    assert kept == [CATS, DOGS]
    assert_consistent(text, kept)


def test_docstring_example_marker_without_citation_is_removed():
    text, kept = verify("A [1] B [7]", [CATS], DOCS)
    assert (text, kept) == ("A [1] B", [CATS])


def test_marker_without_citation_is_dropped_mid_sentence():
    text, kept = verify("Cats [4] sleep [1] a lot.", [CATS], DOCS)
    assert text == "Cats sleep [1] a lot."
    assert_consistent(text, kept)


def test_renumbered_in_order_of_use():
    text, kept = verify("Birds [3] then cats [1].", [CATS, DOGS, BIRDS], DOCS)
    assert text == "Birds [1] then cats [2]."
    assert [(c.n, c.doc_id, c.text) for c in kept] == [(1, "b.md", BIRDS.text), (2, "a.txt", CATS.text)]
    assert_consistent(text, kept)


def test_repeated_marker_is_one_citation():
    text, kept = verify("Dogs [2], dogs again [2] and cats [1].", [CATS, DOGS], DOCS)
    assert text == "Dogs [1], dogs again [1] and cats [2]."
    assert [c.text for c in kept] == [DOGS.text, CATS.text]
    assert_consistent(text, kept)


def test_unused_citations_are_dropped():
    text, kept = verify("Cats sleep [1].", [CATS, DOGS, BIRDS], DOCS)
    assert text == "Cats sleep [1]." and kept == [CATS]


def test_citation_whose_text_does_not_match_is_dropped():
    wrong_text = Citation("a.txt", 0, 31, "Cats sleep twenty hours a day.", 1)
    shifted = Citation("a.txt", 1, 32, CATS.text, 2)
    unknown_doc = Citation("c.txt", 0, 31, CATS.text, 3)
    past_end = Citation("a.txt", 40, 400, DOCS["a.txt"][40:400], 4)
    empty = Citation("a.txt", 5, 5, "", 5)
    negative = Citation("a.txt", -19, 51, DOGS.text, 6)
    bad = [wrong_text, shifted, unknown_doc, past_end, empty, negative]
    good = Citation(DOGS.doc_id, DOGS.start, DOGS.end, DOGS.text, 7)
    text, kept = verify("Cats [1] [2] [3] sleep [4] [5] [6] here [7].", [*bad, good], DOCS)
    assert text == "Cats sleep here [1]."
    assert kept == [Citation(DOGS.doc_id, DOGS.start, DOGS.end, DOGS.text, 1)]
    assert_consistent(text, kept)


def test_nothing_survives():
    text, kept = verify("Cats [1] sleep [2].", [Citation("a.txt", 0, 4, "Dogs", 1)], DOCS)
    assert (text, kept) == ("Cats sleep.", [])
    assert markers(text) == []


def test_answer_without_markers_keeps_no_citations():
    text, kept = verify("  Cats sleep.  ", [CATS], DOCS)
    assert (text, kept) == ("Cats sleep.", [])


def test_adjacent_markers():
    text, kept = verify("Cats[1][9][2]", [CATS, DOGS], DOCS)
    assert text == "Cats [1] [2]"
    assert_consistent(text, kept)


def test_markers_lists_numbers_in_order():
    assert markers("A [2] b [10] c[1]") == [2, 10, 1]
    assert markers("no markers, [x] or [] here") == []
