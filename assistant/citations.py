"""Check an answer's [n] markers against exact character spans of the documents.

A citation survives only if its text equals document[start:end]; a marker without a surviving
citation is removed, citations no marker uses are dropped, and numbers are reassigned 1..k in
the order the answer uses them. Does not decide what to cite.
"""

import dataclasses
import re
from dataclasses import dataclass

from assistant.spans import Span

MARKER = re.compile(r"\s?\[(\d+)\]")


@dataclass(frozen=True)
class Citation(Span):
    n: int  # the [n] marker in the answer that stands for it

    def to_json(self) -> dict:
        return {"n": self.n, "doc": self.doc_id, "start": self.start, "end": self.end, "text": self.text}


def verify(answer: str, proposed: list[Citation], documents: dict[str, str]) -> tuple[str, list[Citation]]:
    """'A [1] B [7]' with only [1] exact -> ('A [1] B', [citation 1])."""
    exact = {c.n: c for c in proposed if _resolves(c, documents)}
    order: list[int] = []
    for n in (int(m.group(1)) for m in MARKER.finditer(answer)):
        if n in exact and n not in order:
            order.append(n)
    renumber = {old: new for new, old in enumerate(order, start=1)}

    def replace(m: re.Match) -> str:
        n = int(m.group(1))
        return f" [{renumber[n]}]" if n in renumber else ""

    text = MARKER.sub(replace, answer).strip()
    kept = [dataclasses.replace(exact[n], n=renumber[n]) for n in order]
    return text, kept


def _resolves(c: Citation, documents: dict[str, str]) -> bool:
    doc = documents.get(c.doc_id)
    return doc is not None and 0 <= c.start < c.end <= len(doc) and doc[c.start : c.end] == c.text


def markers(answer: str) -> list[int]:
    return [int(m.group(1)) for m in MARKER.finditer(answer)]


def citing(sentences: list[Span]) -> list[Citation]:
    """Citations [1]..[k] of `sentences`, in order."""
    return [Citation(x.doc_id, x.start, x.end, x.text, n) for n, x in enumerate(sentences, start=1)]


def with_markers(text: str, n: int) -> str:
    """'Peskov', 2 -> 'Peskov [1] [2]'. Markers only come from here: a '[7]' the document (or the
    model) wrote is dropped, or verify() would read it as a citation."""
    return capitalised(MARKER.sub("", text).strip()) + "".join(f" [{i}]" for i in range(1, n + 1))


def capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]
