"""Vision-language model backends for the reranker, one per module, behind ``VLMBackend``."""

from rag.rerank.backends.base import VLMBackend, VLMReply

__all__ = ["VLMBackend", "VLMReply"]
