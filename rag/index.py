"""The LlamaIndex index over the catalog: a `MultiModalVectorStoreIndex` whose image store is
our Milvus collection, with the Visualized BGE embedding passed explicitly (LlamaIndex's
defaults would resolve to OpenAI/CLIP, DESIGN.md §5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llama_index.core.indices import MultiModalVectorStoreIndex

    from rag.embeddings import VisualizedBGEEmbedding
    from rag.store import CatalogStore


def build_index(
    store: CatalogStore, embedding: VisualizedBGEEmbedding
) -> MultiModalVectorStoreIndex:
    """Both the text and the image store are the one Milvus collection: Visualized BGE puts
    text and images in one space, and a Milvus-backed text store keeps LlamaIndex from also
    copying every node into an in-memory docstore (it does that for stores without text)."""
    from llama_index.core import StorageContext
    from llama_index.core.indices import MultiModalVectorStoreIndex

    return MultiModalVectorStoreIndex(
        nodes=[],
        storage_context=StorageContext.from_defaults(vector_store=store.vector_store),
        image_vector_store=store.vector_store,
        embed_model=embedding,
        image_embed_model=embedding,
    )
