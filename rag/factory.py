"""Settings -> components: the one place (besides the CLI's option handling) that reads settings.

Components take plain constructor arguments; this module wires them from `Settings`. It is also
the single place that decides whether the configured VLM can be used at all
(:func:`vlm_problem`): an unusable configuration means ``rerank: skipped`` with what to set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rag.core.settings import Settings, load_settings
from rag.errors import ConfigError

if TYPE_CHECKING:
    from rag.embedding.multimodal import VisualizedBGEEmbedding
    from rag.engine.query_engine import MMSearchQueryEngine
    from rag.rerank.postprocessor import VLMReranker
    from rag.store.milvus import CatalogStore


def build_embedding(settings: Settings | None = None) -> VisualizedBGEEmbedding:
    """The configured Visualized BGE, loaded from its local model directory."""
    from rag.embedding.hub import resolve_embed_model_dir
    from rag.embedding.multimodal import VisualizedBGEEmbedding

    s = settings or load_settings()
    path = resolve_embed_model_dir(s.embed_model, s.models_dir)
    return VisualizedBGEEmbedding.from_local(
        path,
        device=s.device,
        dtype=s.dtype,
        embed_batch_size=s.embed_batch_size,
        compile=s.compile,
    )


def open_store(
    settings: Settings | None = None,
    embedding: VisualizedBGEEmbedding | None = None,
    *,
    create: bool = True,
    model_id: str | None = None,
    dim: int | None = None,
) -> CatalogStore:
    """The configured collection, checked against ``embedding``'s model id and dimension (or
    ``model_id`` and ``dim`` given without a loaded model, as a Ray driver does)."""
    from rag.store.milvus import CatalogStore

    s = settings or load_settings()
    return CatalogStore(
        uri=s.milvus_uri,
        token=s.milvus_token_value,
        collection=s.collection,
        dim=embedding.dim if embedding else dim,
        model_id=embedding.model_name if embedding else model_id,
        index_type=s.index_type,
        create=create,
    )


def configure_hybrid(vector_store: Any, settings: Settings) -> None:
    """Set the hybrid fusion of ``settings`` on our vector store (other stores keep theirs)."""
    setter = getattr(vector_store, "set_hybrid_ranker", None)
    if setter is None:
        return
    if settings.hybrid_ranker == "weighted":
        alpha = settings.hybrid_alpha
        setter("WeightedRanker", {"weights": [alpha, 1.0 - alpha]})
    else:
        setter("RRFRanker", {"k": settings.hybrid_rrf_k})


def vlm_problem(settings: Settings) -> str | None:
    """Why the configured VLM cannot be used at all (rerank is then skipped), or None.

    Phi-3 Vision needs the remote-code opt-in and a pinned revision; the default model comes
    pinned (``Settings.vlm_revision``), so with the defaults only the opt-in is asked for.
    """
    from rag.rerank.backends.base import is_pinned

    s = settings
    if s.vlm_backend == "phi3v":
        pinned = is_pinned(s.vlm_revision)
        missing = []
        if not s.vlm_trust_remote_code:
            missing.append("MMSEARCH_VLM_TRUST_REMOTE_CODE=true")
        if not pinned:
            missing.append("MMSEARCH_VLM_REVISION=<commit>")
        if missing:
            code = f"{s.vlm_model}@{(s.vlm_revision or '')[:12]}" if pinned else s.vlm_model
            return (
                f"no VLM configured: Phi-3 Vision runs its own code from the Hub ({code}); set "
                + " and ".join(missing)
                + ", or MMSEARCH_VLM_BACKEND=openai with MMSEARCH_VLM_BASE_URL"
            )
    if s.vlm_backend == "openai" and not s.vlm_base_url:
        return "no VLM configured: MMSEARCH_VLM_BACKEND=openai needs MMSEARCH_VLM_BASE_URL"
    return None


def _vlm_loader(s: Settings) -> Callable[[], Any]:
    """A function that loads the configured backend (called on the first rerank)."""

    def load() -> Any:
        if s.vlm_backend == "openai":
            from rag.rerank.backends.openai import OpenAIVLM

            assert s.vlm_base_url is not None  # vlm_problem() ruled that out
            return OpenAIVLM(
                base_url=s.vlm_base_url,
                model=s.vlm_model,
                api_key=s.vlm_api_key,
                timeout_s=s.vlm_timeout_s,
            )
        from rag.rerank.backends.hf import TransformersVLM
        from rag.rerank.backends.phi3v import Phi3VisionVLM

        common: dict[str, Any] = {
            "device": s.device,
            "dtype": s.dtype,
            "revision": s.vlm_revision,
            "trust_remote_code": s.vlm_trust_remote_code,
        }
        if s.vlm_backend == "phi3v":
            return Phi3VisionVLM.from_pretrained(
                s.vlm_model,
                caption_num_crops=s.caption_num_crops,
                rerank_num_crops=s.rerank_num_crops,
                **common,
            )
        return TransformersVLM.from_pretrained(s.vlm_model, **common)

    return load


def build_reranker(settings: Settings | None = None) -> VLMReranker:
    """The configured VLM reranker; its model loads on the first rerank, and a load failure
    shows as ``fallback`` with its reason instead of breaking search.

    Raises:
        ConfigError: the VLM configuration cannot work (the message says what to set).
    """
    from rag.rerank.postprocessor import VLMReranker

    s = settings or load_settings()
    problem = vlm_problem(s)
    if problem:
        raise ConfigError(problem)
    return VLMReranker(
        vlm_factory=_vlm_loader(s), strategy=s.rerank_strategy, passes=s.rerank_passes
    )


def build_query_engine(
    settings: Settings | None = None,
    *,
    rerank: bool | None = None,
    embedding: VisualizedBGEEmbedding | None = None,
    store: CatalogStore | None = None,
    reranker: VLMReranker | None = None,
) -> MMSearchQueryEngine:
    """The configured engine: Visualized BGE + the Milvus collection (+ the VLM reranker).

    Args:
        settings: a `Settings`; read from the environment / ``.env`` when omitted.
        rerank: rerank by default (``None``: ``MMSEARCH_RERANK``).
        embedding, store, reranker: ready components (skip loading them from settings).
    """
    from rag.engine.query_engine import MMSearchQueryEngine
    from rag.retrieval.retriever import ComposedRetriever

    s = settings or load_settings()
    embedding = embedding or build_embedding(s)
    store = store or open_store(s, embedding, create=False)
    do_rerank = s.rerank if rerank is None else rerank
    detail = "no reranker configured"
    if reranker is None and do_rerank:
        try:
            reranker = build_reranker(s)
        except ConfigError as e:
            detail = str(e)
    configure_hybrid(store.vector_store, s)
    retriever = ComposedRetriever(
        embedding=embedding,
        vector_store=store.vector_store,
        top_k=s.top_k,
        hybrid_candidates=s.hybrid_candidates,
    )
    return MMSearchQueryEngine(
        retriever=retriever,
        reranker=reranker,
        store=store,
        rerank=do_rerank,
        no_reranker_detail=detail,
    )
