"""Build components from `Settings` — the one place (with the CLI) that reads settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rag.settings import Settings, load_settings

if TYPE_CHECKING:
    from rag.embeddings import VisualizedBGEEmbedding
    from rag.store import CatalogStore


def build_embedding(settings: Settings | None = None) -> VisualizedBGEEmbedding:
    """The configured Visualized BGE, loaded from its local model directory."""
    from rag.embeddings import VisualizedBGEEmbedding
    from rag.model_hub import resolve_embed_model_dir

    s = settings or load_settings()
    path = resolve_embed_model_dir(s.embed_model, s.models_dir)
    return VisualizedBGEEmbedding.from_local(
        path, device=s.device, dtype=s.dtype, embed_batch_size=s.embed_batch_size
    )


def open_store(
    settings: Settings | None = None,
    embedding: VisualizedBGEEmbedding | None = None,
    *,
    create: bool = True,
) -> CatalogStore:
    """The configured collection, checked against ``embedding``'s model id and dimension."""
    from rag.store import CatalogStore

    s = settings or load_settings()
    return CatalogStore(
        uri=s.milvus_uri,
        token=s.milvus_token_value,
        collection=s.collection,
        dim=embedding.dim if embedding else None,
        model_id=embedding.model_name if embedding else None,
        index_type=s.index_type,
        create=create,
    )


def build_reranker(settings: Settings | None = None) -> Any:
    """The configured VLM reranker (its model loads lazily on the first rerank)."""
    from rag.reranker import build_reranker_from_settings

    return build_reranker_from_settings(settings or load_settings())
