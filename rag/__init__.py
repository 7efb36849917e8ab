"""mmsearch: multimodal semantic search (Visualized BGE + Milvus + VLM rerank) on LlamaIndex.

Heavy modules load on first use, so ``import rag`` (and the CLI's ``--help``) stay fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_query_engine", "VisualizedBGEEmbedding", "MMSearchQueryEngine", "Settings"]


def __getattr__(name: str) -> Any:
    if name in ("build_query_engine", "MMSearchQueryEngine"):
        from rag import query_engine

        return getattr(query_engine, name)
    if name == "VisualizedBGEEmbedding":
        from rag.embeddings import VisualizedBGEEmbedding

        return VisualizedBGEEmbedding
    if name == "Settings":
        from rag.settings import Settings

        return Settings
    raise AttributeError(f"module 'rag' has no attribute {name!r}")
