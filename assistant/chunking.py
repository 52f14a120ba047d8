"""Split text into sentences and token-bounded chunks, each keeping its character offsets.

Pure: no I/O, no models. Does not embed; `text[start:end]` always equals the piece's text.
"""

import re
from functools import lru_cache

from assistant.spans import Span

# Part of an index's shape: change it with any edit that moves a sentence or chunk boundary, so
# indexes built by the old rules are rebuilt instead of answering from stale offsets.
CHUNKER_VERSION = 1

# A sentence ends at . ! ? (plus closing quotes/brackets), before whitespace and a capital,
# digit or opening quote; paragraph breaks always end one.
_BOUNDARY = re.compile(r"""[.!?][”’"')\]]*(?=\s+[“‘"'(\[A-Z0-9])|\n\s*\n""")
_LAST_WORD = re.compile(r"[\w.]+$")
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "gen", "sen", "rep", "gov", "lt", "col",
    "capt", "sgt", "vs", "etc", "inc", "ltd", "co", "corp", "no", "vol", "fig", "approx", "e.g", "i.e",
}


def _is_abbreviation(text: str, dot: int) -> bool:
    """True when the '.' at `dot` closes an abbreviation or initial, not a sentence.

    'George W. Bush' -> True at 'W.'; 'the U.S. Senate' -> True; 'in 2022. The' -> False.
    """
    if text[dot] != ".":
        return False
    # Only the last few characters: searching the whole prefix made splitting quadratic in the text.
    word = _LAST_WORD.search(text, max(0, dot - 64), dot)
    if not word:
        return False
    token = word.group(0)
    if len(token) == 1 and token.isupper():
        return True
    if "." in token and all(len(p) <= 2 for p in token.split(".")):
        return True
    return token.lower() in _ABBREVIATIONS


def split_sentences(doc_id: str, text: str, max_words: int = 80) -> list[Span]:
    """'It rained. We left.' -> spans 'It rained.' (0, 10) and 'We left.' (11, 19) of `doc_id`.

    Text with no sentence ends (lists, tables) is cut every `max_words` words instead."""
    spans: list[Span] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if _is_abbreviation(text, match.start()):
            continue
        spans.extend(_trimmed(doc_id, text, start, match.end()))
        start = match.end()
    spans.extend(_trimmed(doc_id, text, start, len(text)))
    return [piece for span in spans for piece in _word_windows(span, max_words)]


def _word_windows(span: Span, max_words: int) -> list[Span]:
    words = list(re.finditer(r"\S+", span.text))
    if len(words) <= max_words:
        return [span]
    pieces = []
    for i in range(0, len(words), max_words):
        group = words[i : i + max_words]
        start, end = span.start + group[0].start(), span.start + group[-1].end()
        pieces.append(Span(span.doc_id, start, end, span.text[group[0].start() : group[-1].end()]))
    return pieces


def _trimmed(doc_id: str, text: str, start: int, end: int) -> list[Span]:
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return []
    s = start + (len(piece) - len(piece.lstrip()))
    return [Span(doc_id, s, s + len(stripped), stripped)]


@lru_cache(maxsize=1)
def _encoding():  # type: ignore[no-untyped-def]
    import tiktoken

    return tiktoken.get_encoding("cl100k_base")


def count_tokens(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


def chunk_sentences(text: str, sentences: list[Span], max_tokens: int, overlap: int) -> list[Span]:
    """Pack whole sentences of `text` (split_sentences) into chunks of the same document, each at
    most `max_tokens`; neighbours share up to `overlap` tokens of trailing sentences. A sentence
    longer than a chunk stands alone."""
    sizes = [count_tokens(" " + s.text) for s in sentences]  # the space joins it to the last
    chunks: list[Span] = []
    first = 0
    while first < len(sentences):
        last, total = first, sizes[first]
        while last + 1 < len(sentences) and total + sizes[last + 1] <= max_tokens:
            last += 1
            total += sizes[last]
        start, end = sentences[first].start, sentences[last].end
        chunks.append(Span(sentences[first].doc_id, start, end, text[start:end]))
        if last + 1 >= len(sentences):
            break
        first = _overlap_start(sizes, first, last, overlap, max_tokens)
    return chunks


def _overlap_start(sizes: list[int], first: int, last: int, overlap: int, max_tokens: int) -> int:
    """First sentence of the next chunk: back from `last` while within `overlap` tokens, always
    moving forward, and never so far back that the next new sentence no longer fits with it
    (that chunk would lie wholly inside the previous one)."""
    nxt, shared = last + 1, 0
    while nxt - 1 > first and shared + sizes[nxt - 1] + sizes[last + 1] <= min(overlap + sizes[last + 1], max_tokens):
        nxt -= 1
        shared += sizes[nxt]
    return nxt
