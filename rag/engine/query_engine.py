"""The query engine: retriever -> node postprocessors -> the VLM rerank -> `SearchResult`.

`MMSearchQueryEngine` is a LlamaIndex query engine (``query(QueryBundle(query_str=...,
image_path=...))``) plus a convenience ``search(text=, image=, top_k=, filters=)`` that returns
a `SearchResult` with the JSON shape of ``mmsearch search --json``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import Response
from llama_index.core.callbacks import CallbackManager
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores import MetadataFilters

from rag.core.images import DecodedImage, ImageInput
from rag.core.query import (
    ImageQueryBundle,
    SearchMode,
    check_mode,
    query_image,
    query_kind,
)
from rag.errors import ConfigError, EmptyCollectionError, EmptyQueryError
from rag.rerank.outcome import RerankOutcome
from rag.rerank.postprocessor import VLMReranker
from rag.retrieval.filters import parse_filters
from rag.retrieval.retriever import ComposedRetriever

logger = logging.getLogger(__name__)

_RESULT_FIELDS = ("title", "category", "price", "item_key", "source")


@dataclass
class SearchResult:
    """Ranked results plus what the reranker said; :meth:`to_dict` is the CLI's JSON.

    ``query_image`` is the decoded query image (not serialised), so a caller can draw it
    without reading it again.
    """

    query: dict[str, Any]
    nodes: list[NodeWithScore]
    caption: str | None = None
    reason: str | None = None
    rerank: dict[str, Any] = field(default_factory=lambda: {"status": "skipped", "detail": ""})
    timings: dict[str, float] = field(default_factory=dict)
    query_image: DecodedImage | None = None

    @property
    def results(self) -> list[dict[str, Any]]:
        out = []
        for rank, nws in enumerate(self.nodes, start=1):
            meta = nws.node.metadata
            row: dict[str, Any] = {
                "rank": rank,
                "id": nws.node.node_id,
                "image_path": meta.get("image_path") or getattr(nws.node, "image_path", None),
                "score": None if nws.score is None else float(nws.score),
                "retrieval_rank": meta.get("retrieval_rank"),
                "retrieval_score": meta.get("retrieval_score"),
            }
            row.update({k: meta[k] for k in _RESULT_FIELDS if meta.get(k) is not None})
            out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "results": self.results,
            "caption": self.caption,
            "reason": self.reason,
            "rerank": self.rerank,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


class MMSearchQueryEngine(BaseQueryEngine):
    """Retrieve with Visualized BGE + Milvus, run node postprocessors, then the VLM rerank.

    Args:
        retriever: the composed-query retriever.
        reranker: optional VLM reranker (runs after ``node_postprocessors``).
        node_postprocessors: other postprocessors, run in order.
        store: the catalog store (for the empty-collection check and ``close``).
        rerank: rerank by default when a reranker is present.
        no_reranker_detail: what ``rerank.detail`` says when there is no reranker.
    """

    def __init__(
        self,
        *,
        retriever: ComposedRetriever,
        reranker: VLMReranker | None = None,
        node_postprocessors: Sequence[BaseNodePostprocessor] = (),
        store: Any = None,
        rerank: bool = True,
        no_reranker_detail: str = "no reranker configured",
        callback_manager: CallbackManager | None = None,
    ) -> None:
        super().__init__(callback_manager=callback_manager or CallbackManager([]))
        self.retriever = retriever
        self.reranker = reranker
        self.node_postprocessors = list(node_postprocessors)
        self.store = store
        self.rerank_default = rerank
        self.no_reranker_detail = no_reranker_detail

    def _get_prompt_modules(self) -> dict[str, Any]:
        return {"reranker": self.reranker} if self.reranker is not None else {}

    # -- core -------------------------------------------------------------------------
    def _rerank(self, nodes: list[NodeWithScore], bundle: QueryBundle, on: bool) -> RerankOutcome:
        if not on:
            return RerankOutcome(nodes, "skipped", "rerank disabled")
        if self.reranker is None:
            return RerankOutcome(nodes, "skipped", self.no_reranker_detail)
        if not nodes:
            return RerankOutcome(nodes, "skipped", "no candidates")
        t0 = time.perf_counter()
        outcome = self.reranker.rerank(nodes, bundle)
        outcome.timings["rerank_s"] = time.perf_counter() - t0
        return outcome

    def run(
        self,
        bundle: QueryBundle,
        *,
        top_k: int | None = None,
        filters: MetadataFilters | None = None,
        rerank: bool | None = None,
        mode: SearchMode | None = None,
    ) -> SearchResult:
        """Search for one query bundle (the image decoded once if it is not yet).

        ``mode``: ``dense`` (embeddings), ``keyword`` (BM25 on catalog text) or ``hybrid``
        (both, fused); ``None`` picks the default for the query: ``hybrid`` for a text-only
        query when the collection holds text, else ``dense``. The result's ``query["mode"]``
        is the mode that ran.
        """
        kind = query_kind(bundle)
        mode = self.retriever.resolve_mode(kind, check_mode(mode))
        t0 = time.perf_counter()
        if not isinstance(bundle, ImageQueryBundle):
            bundle = ImageQueryBundle(
                query_str=bundle.query_str,
                image_path=bundle.image_path,
                embedding=bundle.embedding,
                image=query_image(bundle),
            )
        found = self.retriever.search(bundle, top_k=top_k, filters=filters, mode=mode)
        nodes = found.nodes
        if not nodes and self.store is not None and self.store.count() == 0:
            raise EmptyCollectionError(
                f"collection {self.store.collection!r} is empty; run `mmsearch ingest PATH` first"
            )
        for pp in self.node_postprocessors:
            nodes = pp.postprocess_nodes(nodes, query_bundle=bundle)
        outcome = self._rerank(nodes, bundle, self.rerank_default if rerank is None else rerank)
        timings = {**found.timings, **outcome.timings, "total_s": time.perf_counter() - t0}
        return SearchResult(
            query={
                "text": bundle.query_str or None,
                "image": bundle.image.label if bundle.image else None,
                "kind": kind,
                "mode": mode,
                "top_k": top_k or self.retriever.top_k,
            },
            nodes=outcome.nodes,
            caption=outcome.caption,
            reason=outcome.reason,
            rerank=outcome.summary(),
            timings=timings,
            query_image=bundle.image,
        )

    def _query(self, query_bundle: QueryBundle) -> Response:
        result = self.run(query_bundle)
        summary = result.reason or (
            f"{len(result.nodes)} results" if result.nodes else "no results"
        )
        return Response(
            response=summary,
            source_nodes=result.nodes,
            metadata={
                "caption": result.caption,
                "reason": result.reason,
                "rerank": result.rerank,
                "timings": result.timings,
                "query": result.query,
            },
        )

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        return await asyncio.to_thread(self._query, query_bundle)

    # -- convenience facade -----------------------------------------------------------
    def search(
        self,
        text: str | None = None,
        image: ImageInput | None = None,
        *,
        top_k: int | None = None,
        filters: MetadataFilters | Sequence[str] | None = None,
        rerank: bool | None = None,
        mode: SearchMode | None = None,
    ) -> SearchResult:
        """Search with text, an image (path, PIL image, bytes or a ``DecodedImage``), or both.

        ``filters`` is a LlamaIndex ``MetadataFilters`` or expressions like ``"price<20"``;
        ``mode`` is ``dense``, ``keyword`` or ``hybrid`` (``None``: the default for the query).
        """
        check_mode(mode)
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k must be > 0, got {top_k}")
        if not (text and text.strip()) and image is None:
            raise EmptyQueryError("empty query: give a text, an image, or both")
        if filters is not None and not isinstance(filters, MetadataFilters):
            filters = parse_filters(filters)
        bundle = ImageQueryBundle.build(text, image)
        return self.run(bundle, top_k=top_k, filters=filters, rerank=rerank, mode=mode)

    async def asearch(self, *args: Any, **kwargs: Any) -> SearchResult:
        return await asyncio.to_thread(self.search, *args, **kwargs)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
