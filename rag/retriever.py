"""`ComposedRetriever`: text, image, or image + instruction queries against the image collection.

LlamaIndex has no composed query (its image retriever overwrites a precomputed embedding,
DESIGN.md §5), so this retriever embeds the query itself with the same model as the catalog
and asks the Milvus store directly. Each node keeps its retrieval score and rank in metadata,
so they survive reranking.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores import MetadataFilters, VectorStoreQuery

from rag.errors import EmptyQueryError, StoreError
from rag.report import record

logger = logging.getLogger(__name__)


def query_kind(bundle: QueryBundle) -> str:
    """``text``, ``image`` or ``composed``; raises EmptyQueryError for neither."""
    has_text = bool(bundle.query_str and bundle.query_str.strip())
    if bundle.image_path and has_text:
        return "composed"
    if bundle.image_path:
        return "image"
    if has_text:
        return "text"
    raise EmptyQueryError("empty query: give a text, an image, or both")


class ComposedRetriever(BaseRetriever):
    """Top-k image nodes for a text, image, or image + text query.

    Args:
        embedding: the catalog's Visualized BGE embedding.
        vector_store: the Milvus store holding the image vectors.
        top_k: number of candidates.
        filters: default metadata filters (per-query filters replace them).
    """

    def __init__(
        self,
        *,
        embedding: Any,
        vector_store: Any,
        top_k: int = 9,
        filters: MetadataFilters | None = None,
        **kwargs: Any,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be > 0, got {top_k}")
        super().__init__(**kwargs)
        self.embedding = embedding
        self.vector_store = vector_store
        self.top_k = top_k
        self.filters = filters

    def embed_query(self, bundle: QueryBundle) -> list[float]:
        """The query vector, in the catalog's space."""
        if bundle.embedding is not None:
            return list(bundle.embedding)
        kind = query_kind(bundle)
        if kind == "composed":
            return list(self.embedding.get_composed_embedding(bundle.image_path, bundle.query_str))
        if kind == "image":
            return list(self.embedding.get_image_embedding(bundle.image_path))
        return list(self.embedding.get_query_embedding(bundle.query_str))

    def retrieve_with(
        self,
        bundle: QueryBundle,
        *,
        top_k: int | None = None,
        filters: MetadataFilters | None = None,
    ) -> list[NodeWithScore]:
        """Like :meth:`retrieve`, with a per-call ``top_k`` and ``filters``."""
        t0 = time.perf_counter()
        vector = self.embed_query(bundle)
        t1 = time.perf_counter()
        try:
            result = self.vector_store.query(
                VectorStoreQuery(
                    query_embedding=vector,
                    similarity_top_k=top_k or self.top_k,
                    filters=filters if filters is not None else self.filters,
                )
            )
        except Exception as e:  # a dropped collection, a dead server, a bad filter field
            from rag.store import _short

            name = getattr(self.vector_store, "collection_name", "?")
            raise StoreError(f"search in collection {name!r} failed: {_short(e)}") from e
        t2 = time.perf_counter()
        record(timings_embed_s=t1 - t0, timings_search_s=t2 - t1)
        out = []
        for rank, (node, score) in enumerate(
            zip(result.nodes or [], result.similarities or [], strict=True), start=1
        ):
            node.metadata["retrieval_score"] = float(score)
            node.metadata["retrieval_rank"] = rank
            for key in ("retrieval_score", "retrieval_rank"):
                if key not in node.excluded_embed_metadata_keys:
                    node.excluded_embed_metadata_keys.append(key)
            out.append(NodeWithScore(node=node, score=float(score)))
        return out

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.retrieve_with(query_bundle)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
