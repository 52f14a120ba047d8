"""Pick the sentences that answer a question from the retrieved chunks.

A 135M model is distracted by every extra sentence, so evidence is ranked per sentence: cosine
to the question plus a normalised sentence-level BM25 score. Does not call the language model.
"""

import re
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from assistant.keywords import SentenceScores
from assistant.lexicon import content_stems
from assistant.retrieval import Passage
from assistant.spans import Span
from assistant.store import OpenIndex

BM25_WEIGHT = 0.5
# What a document may carry that imitates the assistant's own output: citation markers ("[3]",
# "[1, 2]", "[source: a.txt]") and chat-template control tokens ("<|im_start|>").
CITATION_LIKE = re.compile(r"\[\s*(?:\d+(?:\s*[,-]\s*\d+)*|source\b[^\]]{0,80})\s*\]", re.IGNORECASE)
TEMPLATE_TOKEN = re.compile(r"<\|[^|<>]{1,40}\|>")
# A sentence carrying them is weak evidence (planted to be quoted): it ranks as if it matched the
# question's words one full BM25 weight less.
FORGED_PENALTY = BM25_WEIGHT
NEIGHBOUR_GAIN = 2  # question words a neighbouring sentence must add to join the evidence


@dataclass(frozen=True)
class Window(Span):
    """A passage the answer may be copied from: a ranked sentence, with a neighbour when the
    question's words run on into it."""

    rank: int  # 0 for the window of the best sentence
    score: float  # evidence score of the sentence it was built around
    cosine: float
    coverage: float  # share of the question's content words found in the window
    sentences: tuple[Span, ...]


@dataclass(frozen=True)
class Evidence(Span):
    """A sentence of the retrieved passages, scored against the question."""

    score: float
    cosine: float
    coverage: float  # share of the question's content words found in the sentence


class SentenceRanker:
    """Holds a BM25 index over every sentence, and the vectors of those a question has needed;
    built once per process."""

    def __init__(self, index: OpenIndex, embed: Callable[[list[str]], np.ndarray]) -> None:
        self.index = index
        self._embed = embed
        self._keys = [(x.doc_id, x.start) for x in index.sentences]
        self._position = {key: i for i, key in enumerate(self._keys)}
        self._bm25 = SentenceScores([s.text for s in index.sentences])
        self._vectors: dict[int, np.ndarray] = {}

    def rank(self, question: str, query_vector: np.ndarray, passages: list[Passage]) -> list[Evidence]:
        """Sentences inside the retrieved passages, best first."""
        ids = self._inside(passages)
        if not ids:
            return []
        cosine = self._vectors_of(ids) @ query_vector
        lexical = self._bm25.scores(question)[ids]
        top = lexical.max()
        combined = cosine + BM25_WEIGHT * (lexical / top if top > 0 else lexical)
        combined -= FORGED_PENALTY * np.array([forged(self.index.sentences[i].text) for i in ids])
        asked = content_stems(question)
        ranked = sorted(zip(ids, combined, cosine), key=lambda t: -t[1])
        return [_evidence(self.index.sentences[i], float(s), float(c), asked) for i, s, c in ranked]

    def _inside(self, passages: list[Passage]) -> list[int]:
        """The sentences inside any of `passages`, in index order (each found by bisection: a long
        document has hundreds of thousands)."""
        found: set[int] = set()
        sentences = self.index.sentences
        for p in passages:
            i = bisect_left(self._keys, (p.doc_id, p.start))
            while i < len(sentences) and sentences[i].doc_id == p.doc_id and sentences[i].start < p.end:
                if sentences[i].inside(p):
                    found.add(i)
                i += 1
        return sorted(found)

    def _vectors_of(self, ids: list[int]) -> np.ndarray:
        """The sentences' vectors, embedded the first time a question's passages hold them."""
        new = [i for i in ids if i not in self._vectors]
        if new:
            self._vectors.update(zip(new, self._embed([self.index.sentences[i].text for i in new])))
        return np.stack([self._vectors[i] for i in ids])

    def windows(self, question: str, ranked: list[Evidence], count: int) -> list[Window]:
        """Windows around the best `count` sentences, none repeating a sentence an earlier one holds."""
        asked = content_stems(question)
        used: set[tuple[str, int]] = set()
        out: list[Window] = []
        for evidence in ranked:
            if len(out) == count:
                break
            if (evidence.doc_id, evidence.start) in used:
                continue
            sentences = [s for s in self.window(question, evidence) if (s.doc_id, s.start) not in used]
            used.update((s.doc_id, s.start) for s in sentences)
            doc = self.index.documents[evidence.doc_id]
            text = doc[sentences[0].start : sentences[-1].end]
            found = content_stems(text)
            coverage = len(asked & found) / len(asked) if asked else 0.0
            out.append(Window(evidence.doc_id, sentences[0].start, sentences[-1].end, text, len(out),
                              evidence.score, evidence.cosine, coverage, tuple(sentences)))
        return out

    def window(self, question: str, top: Evidence) -> list[Span]:
        """The top sentence, joined by the neighbour before or after it when that neighbour holds
        question words the top sentence lacks (an answer that spans two sentences)."""
        i = self._position[(top.doc_id, top.start)]
        asked, have = content_stems(question), content_stems(top.text)
        best, gain = None, NEIGHBOUR_GAIN - 1
        for j in (i - 1, i + 1):
            if 0 <= j < len(self.index.sentences) and self.index.sentences[j].doc_id == top.doc_id:
                added = len((asked & content_stems(self.index.sentences[j].text)) - have)
                if added > gain:
                    best, gain = self.index.sentences[j], added
        sentence = self.index.sentences[i]
        return sorted([sentence, best], key=lambda x: x.start) if best else [sentence]


def _evidence(sentence: Span, score: float, cosine: float, asked: set[str]) -> Evidence:
    found = content_stems(sentence.text)
    coverage = len(asked & found) / len(asked) if asked else 0.0
    return Evidence(sentence.doc_id, sentence.start, sentence.end, sentence.text, score, cosine, coverage)


def forged(text: str) -> bool:
    """Does `text` carry what looks like a citation marker or a chat-template token?"""
    return bool(CITATION_LIKE.search(text) or TEMPLATE_TOKEN.search(text))
