"""`ComposedRetriever`: text, image, or image + instruction queries against the image collection.

LlamaIndex has no composed query (its image retriever overwrites a precomputed embedding; see
docs/architecture.md, "LlamaIndex"), so this retriever embeds the query itself with the same
model as the catalog and asks the Milvus store directly. Each node keeps its retrieval score
and rank in metadata, so they survive reranking.

Search modes: ``dense`` (the embedding), ``keyword`` (BM25 on the catalog text, through the
store's ``TEXT_SEARCH`` mode) and ``hybrid`` (both fused, the store's ``HYBRID`` mode). By
default a text-only query is ``hybrid`` when the collection has text (Visualized BGE is weak on
pure text -> image), and every query with an image is ``dense``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores import MetadataFilters, VectorStoreQuery
from llama_index.core.vector_stores.types import VectorStoreQueryMode

from rag.core.query import QueryKind, SearchMode, query_image, query_kind
from rag.errors import ConfigError, StoreError
from rag.store.milvus import short_error

logger = logging.getLogger(__name__)


@dataclass
class Retrieved:
    """The candidates of one query, best first, and where the time went."""

    nodes: list[NodeWithScore]
    timings: dict[str, float] = field(default_factory=dict)
    mode: SearchMode = "dense"


class ComposedRetriever(BaseRetriever):
    """Top-k image nodes for a text, image, or image + text query.

    Args:
        embedding: the catalog's Visualized BGE embedding.
        vector_store: the Milvus store holding the image vectors.
        top_k: number of candidates.
        filters: default metadata filters (per-query filters replace them).
        hybrid_candidates: how deep each leg of a hybrid search reaches before the fusion
            (at least ``top_k``): an item ranked low by one leg can still rise when the other
            leg ranks it too.
    """

    def __init__(
        self,
        *,
        embedding: Any,
        vector_store: Any,
        top_k: int = 9,
        filters: MetadataFilters | None = None,
        hybrid_candidates: int = 50,
        **kwargs: Any,
    ) -> None:
        if top_k < 1:
            raise ConfigError(f"top_k must be > 0, got {top_k}")
        if hybrid_candidates < 1:
            raise ConfigError(f"hybrid_candidates must be > 0, got {hybrid_candidates}")
        super().__init__(**kwargs)
        self.embedding = embedding
        self.vector_store = vector_store
        self.top_k = top_k
        self.filters = filters
        self.hybrid_candidates = hybrid_candidates

    @property
    def has_text_index(self) -> bool:
        """Whether the store can search catalog text (``keyword`` / ``hybrid``)."""
        return bool(getattr(self.vector_store, "text_search", False))

    def resolve_mode(self, kind: QueryKind, mode: SearchMode | None) -> SearchMode:
        """The mode a query of ``kind`` runs in: ``mode`` if given (checked against the
        collection), else ``hybrid`` for a text-only query on a collection holding text, else
        ``dense``."""
        if mode is None:
            text = self.has_text_index and getattr(self.vector_store, "has_text", False)
            return "hybrid" if kind == "text" and text else "dense"
        if mode == "dense":
            return mode
        if not self.has_text_index:
            name = getattr(self.vector_store, "collection_name", "?")
            raise ConfigError(
                f"search mode {mode!r} needs a text index, and collection {name!r} has none "
                "(it predates catalog text search): run `mmsearch reindex` to add it from the "
                "stored metadata (no re-embedding), or search with --mode dense"
            )
        if kind == "image":
            raise ConfigError(
                f"search mode {mode!r} matches catalog text: give a query text too, or search "
                "an image alone with --mode dense"
            )
        return mode

    def _query(
        self, bundle: QueryBundle, mode: SearchMode, top_k: int, filters: Any
    ) -> tuple[VectorStoreQuery, float]:
        """The store query for ``mode`` and the seconds spent embedding."""
        if mode == "keyword":
            query = VectorStoreQuery(
                query_str=bundle.query_str,
                similarity_top_k=top_k,
                filters=filters,
                mode=VectorStoreQueryMode.TEXT_SEARCH,
            )
            return query, 0.0
        t0 = time.perf_counter()
        vector = self.embed_query(bundle)
        embed_s = time.perf_counter() - t0
        if mode == "dense":
            return VectorStoreQuery(
                query_embedding=vector, similarity_top_k=top_k, filters=filters
            ), embed_s
        depth = max(top_k, self.hybrid_candidates)
        query = VectorStoreQuery(
            query_embedding=vector,
            query_str=bundle.query_str,
            similarity_top_k=depth,
            sparse_top_k=depth,
            hybrid_top_k=top_k,
            filters=filters,
            mode=VectorStoreQueryMode.HYBRID,
        )
        return query, embed_s

    def embed_query(self, bundle: QueryBundle) -> list[float]:
        """The query vector, in the catalog's space."""
        if bundle.embedding is not None:
            return list(bundle.embedding)
        kind = query_kind(bundle)
        if kind == "text":
            return list(self.embedding.get_query_embedding(bundle.query_str))
        image = query_image(bundle)
        if kind == "composed":
            return list(self.embedding.get_composed_embedding(image, bundle.query_str))
        return list(self.embedding.get_image_embedding(image))

    def search(
        self,
        bundle: QueryBundle,
        *,
        top_k: int | None = None,
        filters: MetadataFilters | None = None,
        mode: SearchMode | None = None,
    ) -> Retrieved:
        """Like :meth:`retrieve`, with a per-call ``top_k``, ``filters`` and search ``mode``
        (``None``: see :meth:`resolve_mode`), and timings."""
        mode = self.resolve_mode(query_kind(bundle), mode)
        query, embed_s = self._query(
            bundle, mode, top_k or self.top_k, filters if filters is not None else self.filters
        )
        t1 = time.perf_counter()
        try:
            result = self.vector_store.query(query)
        except Exception as e:  # a dropped collection, a dead server, a bad filter field
            name = getattr(self.vector_store, "collection_name", "?")
            raise StoreError(f"search in collection {name!r} failed: {short_error(e)}") from e
        t2 = time.perf_counter()
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
        return Retrieved(out, {"embed_s": embed_s, "search_s": t2 - t1}, mode)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.search(query_bundle).nodes

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
