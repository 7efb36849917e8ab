"""mmsearch: multimodal semantic search (Visualized BGE + Milvus + VLM rerank) on LlamaIndex.

Public names (documented in the README):

* ``build_query_engine(settings=None, ...)`` - the configured engine (settings -> components);
* ``build_reranker(settings=None)`` - the configured VLM reranker (the one place that checks
  the VLM configuration);
* ``VisualizedBGEEmbedding`` (``.from_local(model_dir)``) - the LlamaIndex embedding;
* ``VLMReranker`` / ``RerankOutcome`` - the LlamaIndex node postprocessor and its typed result;
* ``MMSearchQueryEngine`` / ``SearchResult`` - the query engine and what ``search`` returns;
* ``Settings`` - every setting (``MMSEARCH_*`` environment variables / ``.env``).

Heavy modules load on first use, so ``import rag`` (and the CLI's ``--help``) stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "build_query_engine": "rag.factory",
    "build_reranker": "rag.factory",
    "VisualizedBGEEmbedding": "rag.embedding.multimodal",
    "VLMReranker": "rag.rerank.postprocessor",
    "RerankOutcome": "rag.rerank.outcome",
    "MMSearchQueryEngine": "rag.engine.query_engine",
    "SearchResult": "rag.engine.query_engine",
    "Settings": "rag.core.settings",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'rag' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
