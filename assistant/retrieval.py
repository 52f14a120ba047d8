"""Hybrid retrieval with llama-index: dense (Chroma) and BM25 chunk retrievers, fused.

Does not pick sentences (see evidence.py); returns chunks with their offsets and fused scores.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

from assistant.embedding import Embedder
from assistant.errors import AssistantError
from assistant.settings import Settings
from assistant.spans import Span
from assistant.store import DOC_KEY, OpenIndex, span_of


@dataclass(frozen=True)
class Passage(Span):
    """A retrieved chunk."""

    score: float  # fused score: higher is better


class Retriever:
    """Built once per process; `retrieve` is the per-question path."""

    def __init__(self, index: OpenIndex, embedder: Embedder, settings: Settings) -> None:
        from llama_index.core import VectorStoreIndex

        self.settings = settings
        self._index = index
        self._vector_index = VectorStoreIndex.from_vector_store(index.vector_store, embed_model=embedder.llama)
        self._bm25 = index.bm25
        self._fusions: dict[str | None, Any] = {}

    def retrieve(self, question: str, query_vector: np.ndarray, doc_id: str | None = None) -> list[Passage]:
        """The fused top-k chunks, from every document or from `doc_id` alone."""
        from llama_index.core.schema import QueryBundle

        bundle = QueryBundle(query_str=question, embedding=query_vector.tolist())
        try:
            hits = self._fusion(doc_id).retrieve(bundle)
        except Exception as e:  # a server can go away after the index was opened
            if self.settings.chroma_url is None:
                raise
            url = self.settings.chroma_url
            raise AssistantError(f"the Chroma server at {url} failed ({type(e).__name__})") from None
        passages = [_passage(hit) for hit in hits]
        return [p for p in passages if doc_id in (None, p.doc_id)]

    def _fusion(self, doc_id: str | None) -> Any:
        """One fusion retriever per document filter, built on first use."""
        if doc_id not in self._fusions:
            self._fusions[doc_id] = self._build_fusion(doc_id)
        return self._fusions[doc_id]

    def _build_fusion(self, doc_id: str | None) -> Any:
        from llama_index.core.llms import MockLLM
        from llama_index.core.retrievers import QueryFusionRetriever
        from llama_index.core.retrievers.fusion_retriever import FUSION_MODES
        from llama_index.core.vector_stores import MetadataFilter, MetadataFilters
        from llama_index.retrievers.bm25 import BM25Retriever

        filters = MetadataFilters(filters=[MetadataFilter(key=DOC_KEY, value=doc_id)]) if doc_id else None
        in_scope = sum(1 for c in self._index.chunks if doc_id in (None, c.doc_id))
        depth = min(max(self.settings.top_k * 2, 8), in_scope)  # each side looks deeper than what fusion keeps
        retrievers = {
            "dense": self._vector_index.as_retriever(similarity_top_k=depth, filters=filters),
            "bm25": BM25Retriever(existing_bm25=self._bm25.bm25, similarity_top_k=depth, filters=filters,
                                  skip_stemming=self._bm25.skip_stemming, token_pattern=self._bm25.token_pattern),
        }
        kind = self.settings.retrieval
        chosen = list(retrievers.values()) if kind == "hybrid" else [retrievers[kind]]
        # One query only: fusion never asks the LLM to rewrite it, so a mock LLM keeps llama-index offline.
        return QueryFusionRetriever(
            chosen, llm=MockLLM(), mode=FUSION_MODES.RECIPROCAL_RANK, similarity_top_k=self.settings.top_k,
            num_queries=1, use_async=False,
        )


def _passage(hit: Any) -> Passage:
    span = span_of(hit.node.metadata, hit.node.get_content())
    return Passage(span.doc_id, span.start, span.end, span.text, float(hit.score or 0.0))
