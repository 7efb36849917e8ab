"""The query engine: retriever -> node postprocessors (the VLM reranker) -> `Response`.

`MMSearchQueryEngine` is a LlamaIndex query engine (``query(QueryBundle(query_str=...,
image_path=...))``) plus a convenience ``search(text=, image=, top_k=, filters=)`` that returns
a `SearchResult` with the JSON shape of ``mmsearch search --json``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import Response
from llama_index.core.callbacks import CallbackManager
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores import MetadataFilters

from rag.errors import EmptyCollectionError, EmptyQueryError
from rag.filters import parse_filters
from rag.images import ImageInput, load_image
from rag.report import query_report, record
from rag.retriever import ComposedRetriever, query_kind

logger = logging.getLogger(__name__)

RERANK_STATUSES = ("ok", "repaired", "fallback", "skipped")
_RESULT_FIELDS = ("title", "category", "price", "item_key", "source")


@dataclass
class SearchResult:
    """Ranked results plus what the reranker said; :meth:`to_dict` is the CLI's JSON."""

    query: dict[str, Any]
    nodes: list[NodeWithScore]
    caption: str | None = None
    reason: str | None = None
    rerank: dict[str, Any] = field(default_factory=lambda: {"status": "skipped", "detail": ""})
    timings: dict[str, float] = field(default_factory=dict)

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


@contextmanager
def _query_image_path(image: ImageInput | None) -> Iterator[str | None]:
    """A file path for the query image (validated); in-memory images go to a temp dir."""
    if image is None:
        yield None
        return
    if isinstance(image, (str, os.PathLike)):
        load_image(image)  # fail fast, with the path in the message
        yield str(image)
        return
    img = load_image(image)
    with tempfile.TemporaryDirectory(prefix="mmsearch-query-") as tmp:
        path = Path(tmp) / "query.png"
        img.save(path)
        yield str(path)


class MMSearchQueryEngine(BaseQueryEngine):
    """Retrieve with Visualized BGE + Milvus, then run node postprocessors (the reranker last).

    Args:
        retriever: the composed-query retriever.
        reranker: optional VLM reranker postprocessor (runs after ``node_postprocessors``).
        node_postprocessors: other postprocessors, run in order.
        store: the catalog store (for the empty-collection check and ``close``).
        rerank: rerank by default when a reranker is present.
    """

    def __init__(
        self,
        *,
        retriever: ComposedRetriever,
        reranker: BaseNodePostprocessor | None = None,
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
    def run(
        self,
        bundle: QueryBundle,
        *,
        top_k: int | None = None,
        filters: MetadataFilters | None = None,
        rerank: bool | None = None,
    ) -> SearchResult:
        kind = query_kind(bundle)
        do_rerank = self.rerank_default if rerank is None else rerank
        t0 = time.perf_counter()
        with query_report() as report:
            nodes = self.retriever.retrieve_with(bundle, top_k=top_k, filters=filters)
            if not nodes and self.store is not None and self.store.count() == 0:
                raise EmptyCollectionError(
                    f"collection {self.store.collection!r} is empty; run `mmsearch ingest PATH` "
                    "first"
                )
            for pp in self.node_postprocessors:
                nodes = pp.postprocess_nodes(nodes, query_bundle=bundle)
            if not do_rerank:
                record(rerank_status="skipped", rerank_detail="rerank disabled")
            elif self.reranker is None:
                record(rerank_status="skipped", rerank_detail=self.no_reranker_detail)
            elif not nodes:
                record(rerank_status="skipped", rerank_detail="no candidates")
            else:
                t_r = time.perf_counter()
                nodes = self.reranker.postprocess_nodes(nodes, query_bundle=bundle)
                record(timings_rerank_s=time.perf_counter() - t_r)
        timings = {
            k.removeprefix("timings_"): v for k, v in report.items() if k.startswith("timings_")
        }
        timings["total_s"] = time.perf_counter() - t0
        return SearchResult(
            query={
                "text": bundle.query_str or None,
                "image": bundle.image_path,
                "kind": kind,
                "top_k": top_k or self.retriever.top_k,
            },
            nodes=nodes,
            caption=report.get("caption"),
            reason=report.get("reason"),
            rerank={
                "status": report.get("rerank_status", "skipped"),
                "detail": report.get("rerank_detail", ""),
            },
            timings=timings,
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
    ) -> SearchResult:
        """Search with text, an image (path, PIL image or bytes), or both.

        ``filters`` is a LlamaIndex ``MetadataFilters`` or expressions like ``"price<20"``.
        """
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be > 0, got {top_k}")
        if not (text and text.strip()) and image is None:
            raise EmptyQueryError("empty query: give a text, an image, or both")
        if filters is not None and not isinstance(filters, MetadataFilters):
            filters = parse_filters(filters)
        with _query_image_path(image) as path:
            bundle = QueryBundle(query_str=text or "", image_path=path)
            return self.run(bundle, top_k=top_k, filters=filters, rerank=rerank)

    async def asearch(self, *args: Any, **kwargs: Any) -> SearchResult:
        return await asyncio.to_thread(self.search, *args, **kwargs)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def build_query_engine(
    settings: Any = None,
    *,
    rerank: bool | None = None,
    embedding: Any = None,
    store: Any = None,
    reranker: BaseNodePostprocessor | None = None,
) -> MMSearchQueryEngine:
    """The configured engine: Visualized BGE + the Milvus collection (+ the VLM reranker).

    Args:
        settings: a `Settings`; read from the environment / ``.env`` when omitted.
        rerank: rerank by default (``None``: ``MMSEARCH_RERANK``).
        embedding, store, reranker: ready components (skip loading them from settings).
    """
    from rag.factory import build_embedding, build_reranker, open_store
    from rag.reranker import vlm_configuration_problem
    from rag.settings import load_settings

    s = settings or load_settings()
    embedding = embedding or build_embedding(s)
    store = store or open_store(s, embedding, create=False)
    do_rerank = s.rerank if rerank is None else rerank
    problem = None
    if reranker is None and do_rerank:
        problem = vlm_configuration_problem(s)
        reranker = None if problem else build_reranker(s)
    retriever = ComposedRetriever(
        embedding=embedding, vector_store=store.vector_store, top_k=s.top_k
    )
    return MMSearchQueryEngine(
        retriever=retriever,
        reranker=reranker,
        store=store,
        rerank=do_rerank,
        no_reranker_detail=problem or "no reranker configured",
    )
