"""The one offset type: an exact piece of one indexed document.

Every stage that points into a document (sentences, chunks, passages, evidence, windows,
citations, the answer's copied text) is a `Span` or builds on one, so `doc_id` is the
document's one name everywhere and `documents[doc_id][start:end] == text` always holds.
Does not read documents or check that invariant (citations.verify does, for answers).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    doc_id: str  # the document's id in the index: its file name, or a longer path ending when names clash
    start: int
    end: int
    text: str

    def inside(self, other: "Span") -> bool:
        return self.doc_id == other.doc_id and other.start <= self.start and self.end <= other.end

    def overlaps(self, other: "Span") -> bool:
        return self.doc_id == other.doc_id and self.start < other.end and other.start < self.end
