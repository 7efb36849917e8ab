"""Contract tests: what the store layer relies on from llama-index-core, pymilvus and
milvus-lite. Each test fails when an upgrade changes one of those behaviours, naming it; the
version bounds in pyproject.toml are the other half of the contract."""

from __future__ import annotations

import inspect
import json

import pytest
from llama_index.core import StorageContext
from llama_index.core.embeddings import MockMultiModalEmbedding
from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.schema import ImageNode
from llama_index.core.vector_stores import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)
from llama_index.core.vector_stores.types import BasePydanticVectorStore, VectorStoreQueryMode
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from rag.errors import ConfigError
from rag.store.expr import filters_to_expr, quote
from rag.store.milvus import CatalogStore
from rag.store.vector_store import CatalogVectorStore


# -- llama-index-core ---------------------------------------------------------------------
def test_vector_store_base_class_surface() -> None:
    abstract = set(BasePydanticVectorStore.__abstractmethods__)
    assert abstract == {"client", "add", "delete", "query"}, abstract
    fields = set(VectorStoreQuery.__dataclass_fields__)
    assert {"query_embedding", "similarity_top_k", "filters", "mode", "query_str"} <= fields
    assert VectorStoreQueryMode.DEFAULT.value == "default"


def test_filter_model_surface() -> None:
    ops = {o.name: o.value for o in FilterOperator}
    expected = {"EQ": "==", "NE": "!=", "LT": "<", "LTE": "<=", "GT": ">", "GTE": ">="}
    assert expected.items() <= ops.items()
    assert {"IN", "NIN"} <= set(ops)
    assert {c.name for c in FilterCondition} >= {"AND", "OR", "NOT"}


def test_node_serialisation_round_trip() -> None:
    node = ImageNode(
        id_="n1", image_path="/a/b.png", metadata={"title": "T", "price": 2.5}, embedding=[1.0]
    )
    row = node_to_metadata_dict(node, remove_text=True, flat_metadata=False)
    assert {"_node_content", "_node_type", "doc_id", "title", "price"} <= set(row)
    assert json.loads(row["_node_content"])["embedding"] is None
    back = metadata_dict_to_node(row)
    assert isinstance(back, ImageNode)
    assert (back.node_id, back.image_path, back.metadata) == ("n1", "/a/b.png", node.metadata)


def test_index_insert_goes_to_the_store_only(milvus_uri: str) -> None:
    """MultiModalVectorStoreIndex.insert_nodes calls add() and keeps no docstore copy."""
    store = CatalogStore(uri=milvus_uri, collection="c", dim=2, model_id="m")
    calls = []
    original = CatalogVectorStore.add

    def spy(self, nodes, **kw):
        calls.append([n.node_id for n in nodes])
        return original(self, nodes, **kw)

    try:
        CatalogVectorStore.add = spy  # type: ignore[method-assign]
        vs = store.vector_store
        index = MultiModalVectorStoreIndex(
            nodes=[],
            storage_context=StorageContext.from_defaults(vector_store=vs),
            image_vector_store=vs,
            embed_model=MockMultiModalEmbedding(embed_dim=2),
            image_embed_model=MockMultiModalEmbedding(embed_dim=2),
        )
        index.insert_nodes([ImageNode(id_="x", image_path="/x.png", embedding=[1.0, 0.0])])
    finally:
        CatalogVectorStore.add = original  # type: ignore[method-assign]
    assert calls == [["x"]]
    assert index.storage_context.docstore.docs == {}
    assert store.count() == 1
    store.close()


# -- pymilvus -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("search", {"collection_name", "data", "filter", "limit", "output_fields", "anns_field"}),
        ("upsert", {"collection_name", "data"}),
        ("query", {"collection_name", "filter", "output_fields"}),
        ("query_iterator", {"collection_name", "batch_size", "filter", "output_fields"}),
        ("delete", {"collection_name", "ids", "filter"}),
        ("create_collection", {"collection_name", "schema", "index_params"}),
        ("describe_index", {"collection_name", "index_name"}),
        ("alter_collection_properties", {"collection_name", "properties"}),
        ("get_load_state", {"collection_name"}),
        ("load_collection", {"collection_name"}),
        ("flush", {"collection_name"}),
    ],
)
def test_pymilvus_client_surface(method: str, params: set[str]) -> None:
    from pymilvus import MilvusClient

    found = set(inspect.signature(getattr(MilvusClient, method)).parameters)
    assert params <= found, f"MilvusClient.{method} lost {sorted(params - found)}"


def test_pymilvus_types_surface() -> None:
    from pymilvus import DataType
    from pymilvus.client.types import LoadState

    assert {"VARCHAR", "DOUBLE", "FLOAT_VECTOR"} <= set(DataType.__members__)
    assert LoadState.Loaded is not None
    from pymilvus import MilvusClient

    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("x", DataType.VARCHAR, max_length=8, nullable=True)  # nullable fields


# -- milvus-lite ----------------------------------------------------------------------------
def test_milvus_lite_internals_we_use() -> None:
    """The lock probe and the in-process server release (rag/store/milvus.py)."""
    from milvus_lite.db import LOCK_FILENAME
    from milvus_lite.server_manager import server_manager_instance

    assert isinstance(LOCK_FILENAME, str) and LOCK_FILENAME
    assert callable(server_manager_instance.release_server)


def test_expressions_round_trip_through_lite(milvus_uri: str) -> None:
    """Our quoting reads back exactly: quotes, backslashes, tabs, newlines, non-ASCII."""
    store = CatalogStore(uri=milvus_uri, collection="q", dim=2, model_id="m")
    titles = ['say "hi"', "back\\slash", "tab\there", "line\nbreak", "café ☕", "it's"]
    store.vector_store.add(
        [
            ImageNode(id_=f"t{i}", embedding=[1.0, 0.0], metadata={"title": t, "price": float(i)})
            for i, t in enumerate(titles)
        ]
    )
    for i, t in enumerate(titles):
        hits = store.client.query("q", filter=f"title == {quote(t)}", output_fields=["id"])
        assert [h["id"] for h in hits] == [f"t{i}"], t
    both = MetadataFilters(
        filters=[
            MetadataFilter(key="price", value=1.0, operator=FilterOperator.GTE),
            MetadataFilters(
                filters=[
                    MetadataFilter(key="title", value="it's"),
                    MetadataFilter(key="title", value=["café ☕"], operator=FilterOperator.IN),
                ],
                condition=FilterCondition.OR,
            ),
        ]
    )
    res = store.vector_store.query(
        VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=10, filters=both)
    )
    assert sorted(res.ids) == ["t4", "t5"]
    store.close()


def test_unsupported_filters_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="operator 'text_match'"):
        filters_to_expr(
            MetadataFilters(
                filters=[MetadataFilter(key="t", value="x", operator=FilterOperator.TEXT_MATCH)]
            )
        )
    with pytest.raises(ConfigError, match="not a valid field name"):
        filters_to_expr(MetadataFilters(filters=[MetadataFilter(key="a b", value="x")]))
