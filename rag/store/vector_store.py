"""`CatalogVectorStore`: the image collection as a LlamaIndex vector store.

A small adapter on LlamaIndex's ``BasePydanticVectorStore`` instead of the upstream
``MilvusVectorStore``: it takes our open client (Milvus Lite allows one process per file, and
an async client would bind the first event loop), never creates the collection or changes its
schema (``CatalogStore`` owns the schema and the indexes), and writes the filter expressions
itself with exact string quoting. Rows are written in the same layout ``MilvusVectorStore`` uses
(metadata keys as fields, the node as ``_node_content`` JSON, the node's text in ``text``), so
either can read the other's rows.

Query modes (LlamaIndex's ``VectorStoreQueryMode``): ``DEFAULT`` (dense, inner product),
``TEXT_SEARCH`` (BM25 over the node text, by Milvus' built-in function) and ``HYBRID`` (both,
fused by Milvus: RRF by default, or weighted; ``VectorStoreQuery.alpha`` picks the weights per
query as in other LlamaIndex stores: 1 = dense only, 0 = BM25 only). Upstream's text-search mode
fails on Milvus Lite 3.2 (it hard-codes ``drop_ratio_search=0.2``; Lite accepts only 0), and
Lite ignores a top-level filter in hybrid search, so here every search leg carries the filter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from pydantic import Field, PrivateAttr

from rag.errors import ConfigError
from rag.store.expr import filters_to_expr, literal, quote
from rag.store.schema import (
    DOC_ID_FIELD,
    EMBEDDING_FIELD,
    ID_FIELD,
    PROP_HAS_TEXT,
    SPARSE_FIELD,
    TEXT_FIELD,
)

logger = logging.getLogger(__name__)

NODE_FIELDS = ["_node_content", "_node_type", TEXT_FIELD]
HYBRID_RANKERS = ("RRFRanker", "WeightedRanker")
_TEXT_MODES = (VectorStoreQueryMode.TEXT_SEARCH, VectorStoreQueryMode.SPARSE)


class CatalogVectorStore(BasePydanticVectorStore):
    """LlamaIndex vector store over an existing mmsearch collection.

    Args:
        client: an open ``pymilvus.MilvusClient`` (the store's own, shared).
        collection_name: the collection (created by ``CatalogStore``).
        batch_size: rows per upsert call.
        text_search: the collection has the BM25 text index (``None``: look it up).
        has_text: some row holds text (``None``: read the collection's property).
        hybrid_ranker: ``RRFRanker`` or ``WeightedRanker`` (names as in ``MilvusVectorStore``).
        hybrid_ranker_params: ``{"k": 60}`` for RRF, ``{"weights": [dense, bm25]}`` for
            weighted.
        search_params: dense search parameters (default: the IP metric).
    """

    stores_text: bool = True
    flat_metadata: bool = False
    collection_name: str = Field(description="Milvus collection name.")
    batch_size: int = Field(default=1000, ge=1, description="Rows per upsert call.")
    text_search: bool = Field(
        default=False, description="The collection has the BM25 text index (text/hybrid modes)."
    )
    hybrid_ranker: str = Field(
        default="RRFRanker", description="Hybrid fusion: RRFRanker or WeightedRanker."
    )
    hybrid_ranker_params: dict[str, Any] = Field(
        default_factory=dict,
        description='{"k": 60} for RRFRanker, {"weights": [dense, bm25]} for WeightedRanker.',
    )
    search_params: dict[str, Any] = Field(
        default_factory=lambda: {"metric_type": "IP"},
        description="Dense search parameters (metric; an HNSW collection adds its ef).",
    )

    _client: Any = PrivateAttr()
    _has_text: bool = PrivateAttr(default=False)

    def __init__(
        self,
        *,
        client: Any,
        collection_name: str,
        batch_size: int = 1000,
        text_search: bool | None = None,
        has_text: bool | None = None,
        hybrid_ranker: str = "RRFRanker",
        hybrid_ranker_params: dict[str, Any] | None = None,
        search_params: dict[str, Any] | None = None,
    ) -> None:
        desc: dict[str, Any] = {}
        if text_search is None or has_text is None:
            desc = dict(client.describe_collection(collection_name))
        if text_search is None:
            text_search = any(
                SPARSE_FIELD in (f.get("output_field_names") or [])
                for f in desc.get("functions", []) or []
            )
        super().__init__(
            stores_text=True,
            collection_name=collection_name,
            batch_size=batch_size,
            text_search=text_search,
            search_params=search_params or {"metric_type": "IP"},
        )
        self._client = client
        self._has_text = (
            has_text
            if has_text is not None
            else (desc.get("properties", {}) or {}).get(PROP_HAS_TEXT) == "true"
        )
        self.set_hybrid_ranker(hybrid_ranker, hybrid_ranker_params or {})

    def set_hybrid_ranker(self, ranker: str, params: dict[str, Any]) -> None:
        """Choose the hybrid fusion; raises ConfigError for an unknown ranker or bad params."""
        if ranker not in HYBRID_RANKERS:
            raise ConfigError(f"hybrid ranker must be one of {HYBRID_RANKERS}, got {ranker!r}")
        if ranker == "RRFRanker":
            k = params.get("k", 60)
            if not isinstance(k, int) or k < 1:
                raise ConfigError(f"RRF k must be an integer > 0, got {k!r}")
            params = {"k": k}
        else:
            weights = params.get("weights", [0.5, 0.5])
            if len(weights) != 2 or any(not 0 <= w <= 1 for w in weights):
                raise ConfigError(
                    f"weighted ranker needs two weights in [0, 1] (dense, bm25), got {weights!r}"
                )
            params = {"weights": [float(w) for w in weights]}
        self.hybrid_ranker, self.hybrid_ranker_params = ranker, params

    @property
    def has_text(self) -> bool:
        """Whether some row holds catalog text (recorded when such a row is first written)."""
        return self._has_text

    @classmethod
    def class_name(cls) -> str:
        return "CatalogVectorStore"

    @property
    def client(self) -> Any:
        return self._client

    # -- writing ----------------------------------------------------------------------
    def _row(self, node: BaseNode) -> dict[str, Any]:
        if node.embedding is None:
            raise ConfigError(f"node {node.node_id!r} has no embedding; embed it before adding")
        row = node_to_metadata_dict(node, remove_text=True, flat_metadata=False)
        row[TEXT_FIELD] = getattr(node, "text", "") or ""
        row.pop(SPARSE_FIELD, None)  # computed by Milvus from the text; a metadata key can't set it
        row[ID_FIELD] = node.node_id
        row[EMBEDDING_FIELD] = list(node.embedding)
        return row

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Upsert ``nodes`` (each with its embedding); a repeated id overwrites its row.

        The first time a node with text is written, the collection records that it holds text
        (before the write, so a crash can only leave the flag set too early, never missing).
        """
        rows = [self._row(n) for n in nodes]
        if self.text_search and not self._has_text and any(r[TEXT_FIELD] for r in rows):
            self._client.alter_collection_properties(
                self.collection_name, properties={PROP_HAS_TEXT: "true"}
            )
            self._has_text = True
        for i in range(0, len(rows), self.batch_size):
            self._client.upsert(self.collection_name, rows[i : i + self.batch_size])
        return [n.node_id for n in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        self._client.delete(self.collection_name, filter=f"{DOC_ID_FIELD} == {quote(ref_doc_id)}")

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        parts = [f"{ID_FIELD} in {literal(list(node_ids))}"] if node_ids else []
        if filters is not None and filters.filters:
            parts.append(f"({filters_to_expr(filters)})")
        if not parts:
            raise ConfigError("delete_nodes needs node_ids or filters")
        self._client.delete(self.collection_name, filter=" and ".join(parts))

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        parts = [f"{ID_FIELD} in {literal(list(node_ids))}"] if node_ids else []
        if filters is not None and filters.filters:
            parts.append(f"({filters_to_expr(filters)})")
        if not parts:
            raise ConfigError("get_nodes needs node_ids or filters")
        rows = self._client.query(
            self.collection_name, filter=" and ".join(parts), output_fields=NODE_FIELDS
        )
        return [self._node(row) for row in rows]

    # -- reading ----------------------------------------------------------------------
    @staticmethod
    def _node(entity: dict[str, Any]) -> BaseNode:
        node = metadata_dict_to_node(entity)
        if entity.get(TEXT_FIELD) and hasattr(node, "text"):
            node.text = entity[TEXT_FIELD]
        return node

    def _result(self, hits: list[dict[str, Any]], bm25: bool = False) -> VectorStoreQueryResult:
        # Milvus Lite returns BM25 scores negated (its engine sorts ascending); a server
        # returns them positive. BM25 is never negative, so abs() is the score on both.
        return VectorStoreQueryResult(
            nodes=[self._node(h["entity"]) for h in hits],
            similarities=[
                abs(float(h["distance"])) if bm25 else float(h["distance"]) for h in hits
            ],
            ids=[str(h["id"]) for h in hits],
        )

    def _dense(self, query: VectorStoreQuery, expr: str) -> VectorStoreQueryResult:
        if query.query_embedding is None:
            raise ConfigError("a dense query needs query_embedding")
        hits = self._client.search(
            self.collection_name,
            data=[list(query.query_embedding)],
            anns_field=EMBEDDING_FIELD,
            filter=expr,
            limit=query.similarity_top_k,
            output_fields=NODE_FIELDS,
            search_params=self.search_params,
        )[0]
        return self._result(hits)

    def _need_text(self, query: VectorStoreQuery) -> str:
        if not self.text_search:
            raise ConfigError(
                f"collection {self.collection_name!r} has no text index; query mode "
                f"{query.mode.value!r} needs one (mmsearch reindex adds it)"
            )
        if not (query.query_str and query.query_str.strip()):
            raise ConfigError(f"query mode {query.mode.value!r} needs query_str")
        return query.query_str

    def _text(self, query: VectorStoreQuery, expr: str) -> VectorStoreQueryResult:
        hits = self._client.search(
            self.collection_name,
            data=[self._need_text(query)],
            anns_field=SPARSE_FIELD,
            filter=expr,
            limit=query.sparse_top_k or query.similarity_top_k,
            output_fields=NODE_FIELDS,
            search_params={"metric_type": "BM25"},
        )[0]
        return self._result(hits, bm25=True)

    def _ranker(self, alpha: float | None) -> Any:
        from pymilvus import RRFRanker, WeightedRanker

        if alpha is not None:
            if not 0 <= alpha <= 1:
                raise ConfigError(f"alpha must be in [0, 1] (1 = dense only), got {alpha}")
            return WeightedRanker(alpha, 1 - alpha)
        if self.hybrid_ranker == "WeightedRanker":
            return WeightedRanker(*self.hybrid_ranker_params["weights"])
        return RRFRanker(self.hybrid_ranker_params["k"])

    def _hybrid(self, query: VectorStoreQuery, expr: str) -> VectorStoreQueryResult:
        """Dense and BM25 legs fused by Milvus. As in LlamaIndex's other hybrid stores,
        ``similarity_top_k`` is the dense leg's depth, ``sparse_top_k`` the BM25 leg's, and
        ``hybrid_top_k`` how many fused results come back."""
        from pymilvus import AnnSearchRequest

        text = self._need_text(query)
        if query.query_embedding is None:
            raise ConfigError("a hybrid query needs query_embedding and query_str")
        # Each leg carries the filter: Milvus Lite ignores a top-level filter in hybrid search.
        legs = [
            AnnSearchRequest(
                data=[list(query.query_embedding)],
                anns_field=EMBEDDING_FIELD,
                param=dict(self.search_params),
                limit=query.similarity_top_k,
                expr=expr,
            ),
            AnnSearchRequest(
                data=[text],
                anns_field=SPARSE_FIELD,
                param={"metric_type": "BM25"},
                limit=query.sparse_top_k or query.similarity_top_k,
                expr=expr,
            ),
        ]
        hits = self._client.hybrid_search(
            self.collection_name,
            legs,
            ranker=self._ranker(query.alpha),
            limit=query.hybrid_top_k or query.similarity_top_k,
            output_fields=NODE_FIELDS,
        )[0]
        return self._result(hits)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Top-k nodes with metadata filters: by inner product on the image vectors
        (``DEFAULT``), by BM25 on the node text (``TEXT_SEARCH``; ``SPARSE`` is the same
        here), or both fused (``HYBRID``)."""
        expr = filters_to_expr(query.filters)
        if query.mode == VectorStoreQueryMode.DEFAULT:
            return self._dense(query, expr)
        if query.mode in _TEXT_MODES:
            return self._text(query, expr)
        if query.mode == VectorStoreQueryMode.HYBRID:
            return self._hybrid(query, expr)
        raise ConfigError(
            f"query mode {query.mode.value!r} is not supported by this store; use default, "
            "text_search or hybrid"
        )

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)
