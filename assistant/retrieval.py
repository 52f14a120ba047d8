"""Hybrid retrieval with llama-index: dense (Chroma) and BM25 chunk retrievers, fused.

Does not pick sentences (see evidence.py); returns chunks with their offsets and fused scores.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

from assistant.embedding import Embedder
from assistant.errors import AssistantError
from assistant.indexing import OpenIndex
from assistant.settings import Settings


@dataclass(frozen=True)
class Passage:
    doc_id: str
    start: int
    end: int
    text: str
    score: float  # fused score: higher is better


class Retriever:
    """Built once per process; `retrieve` is the per-question path."""

    def __init__(self, index: OpenIndex, embedder: Embedder, settings: Settings) -> None:
        from llama_index.core import VectorStoreIndex
        from llama_index.core.llms import MockLLM
        from llama_index.core.retrievers import QueryFusionRetriever

        self.settings = settings
        depth = max(settings.top_k * 2, 8)  # each side looks deeper than what fusion keeps
        vector_index = VectorStoreIndex.from_vector_store(index.vector_store, embed_model=embedder.llama)
        retrievers = {
            "dense": vector_index.as_retriever(similarity_top_k=depth),
            "bm25": _bm25(index, depth),
        }
        chosen = list(retrievers.values()) if settings.retrieval == "hybrid" else [retrievers[settings.retrieval]]
        # One query only: fusion never asks the LLM to rewrite it, so a mock LLM keeps llama-index offline.
        self._fusion = QueryFusionRetriever(
            chosen, llm=MockLLM(), mode="reciprocal_rerank", similarity_top_k=settings.top_k,
            num_queries=1, use_async=False,
        )

    def retrieve(self, question: str, query_vector: np.ndarray) -> list[Passage]:
        from llama_index.core.schema import QueryBundle

        bundle = QueryBundle(query_str=question, embedding=query_vector.tolist())
        try:
            hits = self._fusion.retrieve(bundle)
        except Exception as e:  # a server can go away after the index was opened
            if self.settings.chroma_url is None:
                raise
            raise AssistantError(f"the Chroma server at {self.settings.chroma_url} failed ({type(e).__name__})") from None
        return [_passage(hit) for hit in hits]


def _bm25(index: OpenIndex, depth: int) -> Any:
    from llama_index.retrievers.bm25 import BM25Retriever

    retriever = BM25Retriever.from_persist_dir(str(index.bm25_dir))
    retriever.similarity_top_k = min(depth, len(index.chunks))
    return retriever


def _passage(hit: Any) -> Passage:
    meta = hit.node.metadata
    return Passage(str(meta["source"]), int(meta["start"]), int(meta["end"]), hit.node.get_content(), float(hit.score or 0.0))
