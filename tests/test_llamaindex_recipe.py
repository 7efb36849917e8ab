"""The README's "LlamaIndex" recipes, run as written: our embedding in a stock
``MultiModalVectorStoreIndex`` on Milvus, and an mmsearch collection opened from stock
LlamaIndex (``llama-index-vector-stores-milvus``), plus the traps the section warns about."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from llama_index.core import SimpleDirectoryReader, StorageContext
from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.schema import ImageDocument, ImageNode
from llama_index.vector_stores.milvus import IndexManagement, MilvusVectorStore

from tests.helpers import write_images


def test_our_embedding_in_a_stock_index_on_milvus(tmp_path: Path, tiny_embedding) -> None:
    paths = write_images(tmp_path / "photos", 6)
    images = MilvusVectorStore(
        uri=str(tmp_path / "li.db"),
        collection_name="li_images",
        dim=tiny_embedding.dim,
        similarity_metric="IP",
        overwrite=True,
        use_async_client=False,
    )
    storage = StorageContext.from_defaults(image_store=images)  # image_store=, not vector_store=
    # metadata matters: from_documents silently skips nodes with no text and no metadata
    docs = [ImageDocument(image_path=str(p), metadata={"file_path": str(p)}) for p in paths]
    index = MultiModalVectorStoreIndex.from_documents(
        docs,
        storage_context=storage,
        embed_model=tiny_embedding,
        image_embed_model=tiny_embedding,
    )
    hits = index.as_retriever(image_similarity_top_k=3).image_to_image_retrieve(str(paths[4]))
    assert hits[0].node.image_path == str(paths[4])  # an image finds itself first
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert (
        images.client.query("li_images", filter="", output_fields=["count(*)"])[0]["count(*)"] == 6
    )  # the vectors are in Milvus, not in memory


def test_our_collection_from_stock_llamaindex(catalog, tiny_embedding) -> None:
    store, folder, _ = catalog
    stock = MilvusVectorStore(
        uri=store.uri,
        collection_name=store.collection,
        dim=tiny_embedding.dim,
        embedding_field="embedding",
        doc_id_field="doc_id",
        text_key="text",
        similarity_metric="IP",
        overwrite=False,
        index_management=IndexManagement.NO_VALIDATION,
        use_async_client=False,
    )
    stock.client.load_collection(store.collection)  # a reopened collection is released
    index = MultiModalVectorStoreIndex.from_vector_store(
        vector_store=stock,
        image_vector_store=stock,
        embed_model=tiny_embedding,
        image_embed_model=tiny_embedding,
    )
    hits = index.as_retriever(image_similarity_top_k=3).image_to_image_retrieve(
        str(folder / "img_005.png")
    )
    assert isinstance(hits[0].node, ImageNode)
    assert hits[0].node.metadata["title"] == "Product 5"  # our rows, read by the stock class


def test_the_trap_a_default_store_keeps_images_in_memory(tmp_path: Path, tiny_embedding) -> None:
    """Passing the Milvus store as vector_store= leaves the images in an in-memory store."""
    paths = write_images(tmp_path / "photos", 2)
    milvus = MilvusVectorStore(
        uri=str(tmp_path / "trap.db"),
        collection_name="trap",
        dim=tiny_embedding.dim,
        overwrite=True,
        use_async_client=False,
    )
    index = MultiModalVectorStoreIndex.from_documents(
        [ImageDocument(image_path=str(p), metadata={"file_path": str(p)}) for p in paths],
        storage_context=StorageContext.from_defaults(vector_store=milvus),
        embed_model=tiny_embedding,
        image_embed_model=tiny_embedding,
    )
    assert milvus.client.query("trap", filter="", output_fields=["count(*)"])[0]["count(*)"] == 0
    assert len(index.image_vector_store.data.embedding_dict) == 2  # type: ignore[attr-defined]


def test_the_trap_image_documents_without_metadata_are_skipped(
    tmp_path: Path, tiny_embedding
) -> None:
    paths = write_images(tmp_path / "photos", 2)
    index = MultiModalVectorStoreIndex.from_documents(
        [ImageDocument(image_path=str(p)) for p in paths],
        embed_model=tiny_embedding,
        image_embed_model=tiny_embedding,
    )
    assert index.image_vector_store.data.embedding_dict == {}  # type: ignore[attr-defined]


@pytest.mark.skipif(
    importlib.util.find_spec("llama_index.readers") is not None,
    reason="llama-index-readers-file is installed: SimpleDirectoryReader reads images properly",
)
def test_the_trap_directory_reader_without_readers_file(tmp_path: Path) -> None:
    """Without llama-index-readers-file, SimpleDirectoryReader yields raw text documents."""
    write_images(tmp_path / "photos", 2)
    docs = SimpleDirectoryReader(str(tmp_path / "photos")).load_data()
    assert docs and not any(isinstance(d, ImageDocument) for d in docs)


def test_stock_text_search_fails_on_lite_and_stock_hybrid_matches_ours(
    catalog, tiny_embedding
) -> None:
    """Why our adapter serves keyword search: upstream's TEXT_SEARCH hard-codes
    drop_ratio_search=0.2, which Milvus Lite 3.2 rejects. Its HYBRID works on our collection
    (same field names) and fuses exactly as our adapter does with the same depths. When this
    test fails on an upgrade, upstream's text search may have become usable."""
    from llama_index.core.vector_stores import VectorStoreQuery
    from llama_index.core.vector_stores.types import VectorStoreQueryMode
    from llama_index.vector_stores.milvus.utils import BM25BuiltInFunction

    store, _, _ = catalog
    stock = MilvusVectorStore(
        uri=store.uri,
        collection_name=store.collection,
        dim=tiny_embedding.dim,
        embedding_field="embedding",
        text_key="text",
        similarity_metric="IP",
        overwrite=False,
        index_management=IndexManagement.NO_VALIDATION,
        use_async_client=False,
        enable_sparse=True,
        sparse_embedding_field="sparse_embedding",
        sparse_embedding_function=BM25BuiltInFunction(
            input_field_names="text", output_field_names="sparse_embedding"
        ),
    )
    with pytest.raises(Exception, match="drop_ratio_search"):
        stock.query(
            VectorStoreQuery(
                query_str="Product 5", similarity_top_k=3, mode=VectorStoreQueryMode.TEXT_SEARCH
            )
        )
    query = VectorStoreQuery(
        query_str="Product 5",
        query_embedding=tiny_embedding.get_query_embedding("Product 5"),
        similarity_top_k=5,
        mode=VectorStoreQueryMode.HYBRID,
    )
    theirs, ours = stock.query(query), store.vector_store.query(query)
    assert theirs.ids and theirs.ids == ours.ids
    assert theirs.similarities == pytest.approx(ours.similarities)
