"""Keyword (BM25) search, one way for every index: bm25s with English stop words and the
PyStemmer stemmer of lexicon.py, for the chunks (inside llama-index's BM25Retriever) and for the
sentences (scored directly).

Does not fuse scores with dense retrieval (retrieval.py, evidence.py) or decide what is indexed.
"""

from pathlib import Path
from typing import Any

import numpy as np

from assistant.errors import AssistantError
from assistant.lexicon import stemmer

LANGUAGE = "en"  # bm25s's English stop words
TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # bm25s's and llama-index's default: words of two characters or more


def chunk_retriever(nodes: list[Any]) -> Any:
    """A llama-index BM25 retriever over `nodes`; an error when no node has a word it keeps."""
    from llama_index.retrievers.bm25 import BM25Retriever

    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # bm25s divides by zero before it gives up
            return BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=len(nodes), stemmer=stemmer(),
                                               language=LANGUAGE, token_pattern=TOKEN_PATTERN)
    except ValueError:  # bm25s, when no text has a word it keeps
        raise AssistantError("no document has a word keyword search can index (only stop words?)") from None


def load_chunk_retriever(folder: Path) -> Any:
    from llama_index.retrievers.bm25 import BM25Retriever

    return BM25Retriever.from_persist_dir(str(folder), allow_pickle=False)  # never run code from an index's files


class SentenceScores:
    """BM25 over a list of texts, scoring all of them against a question at once."""

    def __init__(self, texts: list[str]) -> None:
        import bm25s

        self._count = len(texts)
        self._bm25 = bm25s.BM25()
        if texts:
            self._bm25.index(_tokens(texts, ids=True), show_progress=False)

    def scores(self, question: str) -> np.ndarray:
        """One score per text, in order; all zero when the question has no word that counts."""
        words = _tokens([question], ids=False)[0]
        if not words:
            return np.zeros(self._count)
        return np.asarray(self._bm25.get_scores(words))


def _tokens(texts: list[str], ids: bool) -> Any:
    import bm25s

    return bm25s.tokenize(texts, stopwords=LANGUAGE, stemmer=stemmer(), token_pattern=TOKEN_PATTERN,
                          show_progress=False, return_ids=ids)
