"""`CatalogVectorStore`: the image collection as a LlamaIndex vector store.

A small adapter on LlamaIndex's ``BasePydanticVectorStore`` instead of the upstream
``MilvusVectorStore``: it takes our open client (Milvus Lite allows one process per file, and
an async client would bind the first event loop), never creates or alters the collection
(``CatalogStore`` owns the schema and the index), and writes the filter expressions itself with
exact string quoting. Rows are written in the same layout ``MilvusVectorStore`` uses (metadata
keys as fields, the node as ``_node_content`` JSON), so either can read the other's rows.
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
from rag.store.schema import DOC_ID_FIELD, EMBEDDING_FIELD, ID_FIELD, TEXT_FIELD

logger = logging.getLogger(__name__)

NODE_FIELDS = ["_node_content", "_node_type", TEXT_FIELD]


class CatalogVectorStore(BasePydanticVectorStore):
    """LlamaIndex vector store over an existing mmsearch collection.

    Args:
        client: an open ``pymilvus.MilvusClient`` (the store's own, shared).
        collection_name: the collection (created by ``CatalogStore``).
        batch_size: rows per upsert call.
        search_params: dense search parameters (default: the IP metric).
    """

    stores_text: bool = True
    flat_metadata: bool = False
    collection_name: str = Field(description="Milvus collection name.")
    batch_size: int = Field(default=1000, ge=1, description="Rows per upsert call.")
    search_params: dict[str, Any] = Field(
        default_factory=lambda: {"metric_type": "IP"},
        description="Dense search parameters (metric; an HNSW collection adds its ef).",
    )

    _client: Any = PrivateAttr()

    def __init__(
        self,
        *,
        client: Any,
        collection_name: str,
        batch_size: int = 1000,
        search_params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            stores_text=True,
            collection_name=collection_name,
            batch_size=batch_size,
            search_params=search_params or {"metric_type": "IP"},
        )
        self._client = client

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
        row[ID_FIELD] = node.node_id
        row[EMBEDDING_FIELD] = list(node.embedding)
        return row

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Upsert ``nodes`` (each with its embedding); a repeated id overwrites its row."""
        rows = [self._row(n) for n in nodes]
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
        return VectorStoreQueryResult(
            nodes=[self._node(h["entity"]) for h in hits],
            similarities=[float(h["distance"]) for h in hits],
            ids=[str(h["id"]) for h in hits],
        )

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Top-k nodes by inner product on the image vectors, with metadata filters."""
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise ConfigError(f"query mode {query.mode.value!r} is not supported by this store")
        return self._dense(query, filters_to_expr(query.filters))

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)
