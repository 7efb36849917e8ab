"""`ComposedRetriever`: text, image, or image + instruction queries against the image collection.

LlamaIndex has no composed query (its image retriever overwrites a precomputed embedding; see
docs/architecture.md, "LlamaIndex"), so this retriever embeds the query itself with the same
model as the catalog and asks the Milvus store directly. Each node keeps its retrieval score
and rank in metadata, so they survive reranking.
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

from rag.core.query import SearchMode, query_image, query_kind
from rag.errors import ConfigError, StoreError
from rag.store.milvus import short_error

logger = logging.getLogger(__name__)


@dataclass
class Retrieved:
    """The candidates of one query, best first, and where the time went."""

    nodes: list[NodeWithScore]
    timings: dict[str, float] = field(default_factory=dict)


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
            raise ConfigError(f"top_k must be > 0, got {top_k}")
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
        mode: SearchMode = "dense",
    ) -> Retrieved:
        """Like :meth:`retrieve`, with a per-call ``top_k``, ``filters`` and search ``mode``,
        and timings."""
        if mode != "dense":
            name = getattr(self.vector_store, "collection_name", "?")
            raise ConfigError(
                f"search mode {mode!r} needs a text index, and collection {name!r} has none; "
                "use mode 'dense'"
            )
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
        return Retrieved(out, {"embed_s": t1 - t0, "search_s": t2 - t1})

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.search(query_bundle).nodes

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
