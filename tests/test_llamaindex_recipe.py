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
