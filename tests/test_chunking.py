"""Sentences and chunks keep exact character offsets into the text they came from."""

import pytest

from assistant.chunking import chunk_sentences, count_tokens, split_sentences
from assistant.spans import Span

SLACK = 5  # tokens: chunk text keeps the document's own whitespace, sizes are counted with one space


def assert_round_trip(text: str, spans) -> None:
    for s in spans:
        assert text[s.start : s.end] == s.text
        assert s.text == s.text.strip() and s.text


def sentences_in(chunk, sentences):
    return [s for s in sentences if chunk.start <= s.start and s.end <= chunk.end]


def test_article_sentences_round_trip_in_order(article):
    spans = split_sentences("a", article)
    assert len(spans) > 50
    assert_round_trip(article, spans)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))
    # Nothing but whitespace is left out between sentences.
    gaps = [article[a.end : b.start] for a, b in zip(spans, spans[1:])]
    assert all(not g.strip() for g in gaps)
    assert not article[: spans[0].start].strip() and not article[spans[-1].end :].strip()


def test_docstring_example():
    assert split_sentences("a", "It rained. We left.") == [Span("a", 0, 10, "It rained."),
                                                             Span("a", 11, 19, "We left.")]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The U.S. Senate voted on Monday. Then it adjourned.",
         ["The U.S. Senate voted on Monday.", "Then it adjourned."]),
        ("George W. Bush spoke first. He left early.", ["George W. Bush spoke first.", "He left early."]),
        ('He said, "Stop." Then he left.', ['He said, "Stop."', "Then he left."]),
        ("“Yes,” she said. “No!” he replied.", ["“Yes,” she said.", "“No!” he replied."]),
        ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
        ("Prices rose 3.5 percent in 2022. The bank acted.", ["Prices rose 3.5 percent in 2022.", "The bank acted."]),
        ("A heading\n\nA paragraph without a full stop", ["A heading", "A paragraph without a full stop"]),
        ("  Leading and trailing space.   Next one!  ", ["Leading and trailing space.", "Next one!"]),
        ("Is it? Yes (mostly). Fine.", ["Is it?", "Yes (mostly).", "Fine."]),
    ],
)
def test_tricky_sentences(text, expected):
    spans = split_sentences("a", text)
    assert_round_trip(text, spans)
    assert [s.text for s in spans] == expected


def test_text_without_punctuation_is_cut_into_word_windows():
    words = [f"word{i}" for i in range(200)]
    text = "  " + " ".join(words) + "\n"
    spans = split_sentences("a", text, max_words=80)
    assert_round_trip(text, spans)
    assert [len(s.text.split()) for s in spans] == [80, 80, 40]
    assert " ".join(s.text for s in spans).split() == words


def test_empty_and_blank_text_have_no_sentences():
    assert split_sentences("a", "") == []
    assert split_sentences("a", " \n\n\t ") == []
    assert chunk_sentences("", [], 200, 40) == []


@pytest.mark.parametrize("max_tokens, overlap", [(200, 40), (64, 16), (100, 0), (40, 10)])
def test_article_chunks(article, max_tokens, overlap):
    sentences = split_sentences("article.txt", article)
    chunks = chunk_sentences(article, sentences, max_tokens, overlap)
    assert chunks
    for chunk in chunks:
        assert chunk.doc_id == "article.txt"
        assert article[chunk.start : chunk.end] == chunk.text
        inside = sentences_in(chunk, sentences)
        assert inside and inside[0].start == chunk.start and inside[-1].end == chunk.end
        # Within the budget, unless a single sentence is longer than a whole chunk.
        assert count_tokens(chunk.text) <= max_tokens + SLACK or len(inside) == 1
    # Every sentence lies inside some chunk.
    for s in sentences:
        assert any(c.start <= s.start and s.end <= c.end for c in chunks), s
    # Always moving forward.
    assert all(b.start > a.start for a, b in zip(chunks, chunks[1:]))


def test_overlap_shares_trailing_sentences(article):
    sentences = split_sentences("a", article)
    overlap = 40
    chunks = chunk_sentences(article, sentences, 200, overlap)
    shared = 0
    for a, b in zip(chunks, chunks[1:]):
        inside = sentences_in(a, sentences)
        if len(inside) > 1 and count_tokens(" " + inside[-1].text) <= overlap:
            assert b.start < a.end, "a chunk whose last sentence fits the overlap must share it"
            common = article[b.start : a.end]
            assert a.text.endswith(common) and b.text.startswith(common)
            assert count_tokens(common) <= overlap + SLACK
            shared += 1
    assert shared >= len(chunks) // 2


def test_no_overlap_means_disjoint_chunks(article):
    sentences = split_sentences("a", article)
    chunks = chunk_sentences(article, sentences, 100, 0)
    assert len(chunks) > 2
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:]))


def test_short_text_is_one_chunk():
    text = "Cats sleep. Dogs bark. Birds sing."
    sentences = split_sentences("pets.txt", text)
    (chunk,) = chunk_sentences(text, sentences, 200, 40)
    assert (chunk.start, chunk.end, chunk.text) == (0, len(text), text)


def test_no_chunk_lies_inside_its_predecessor():
    text = "Alpha is first. Beta is second. Gamma " + "word " * 40 + "ends here."
    sentences = split_sentences("a", text)
    chunks = chunk_sentences(text, sentences, 20, 10)
    assert all(b.end > a.end for a, b in zip(chunks, chunks[1:])), [c.text[:20] for c in chunks]
