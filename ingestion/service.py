"""Ingest paths into the configured collection: the one orchestration the CLI, the demo and
other front ends share (list items -> load the model -> open the store -> run -> close)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingestion.pipeline import Ingestor, IngestReport, Progress
from ingestion.sources import CatalogItem, items_for

if TYPE_CHECKING:
    from ingestion.distributed import RayOptions
    from rag.core.settings import Settings
    from rag.embedding.multimodal import VisualizedBGEEmbedding
    from rag.store.milvus import CatalogStore

logger = logging.getLogger(__name__)


@dataclass
class IngestResult:
    """The pipeline's report and the collection's row count afterwards."""

    report: IngestReport
    rows: int


def list_items(paths: Sequence[str]) -> list[CatalogItem]:
    """Every item of every path; a bad path fails here, before any model loads."""
    return [item for p in paths for item in items_for(p)]


def ingest_items(
    settings: Settings,
    items: Sequence[CatalogItem],
    *,
    workers: int | None = None,
    prune: bool = False,
    progress: Progress | None = None,
    embedding: VisualizedBGEEmbedding | None = None,
    store: CatalogStore | None = None,
    text_fields: Sequence[str] | None = None,
    ray: RayOptions | None = None,
) -> IngestResult:
    """Index ``items`` into the configured collection.

    Args:
        settings: where to write and with which model.
        items: what to index (see :func:`list_items`).
        workers: decode / download threads (None: by the model's device,
            :func:`ingestion.pipeline.default_workers`).
        prune: also drop rows of the same sources whose item is gone.
        progress: called with (done, total).
        embedding, store: ready components; a store passed in stays open.
        text_fields: catalog fields that make the search text (``None``: the collection's
            recorded fields, title + description for a new one).
        ray: run on a Ray cluster instead (:mod:`ingestion.distributed`); the model then loads
            on the Ray workers, not here.
    """
    from rag.factory import build_embedding, open_store

    if ray is not None:
        return _ingest_on_ray(
            settings,
            items,
            ray,
            prune=prune,
            progress=progress,
            store=store,
            text_fields=text_fields,
        )

    sources = sorted({item.source for item in items}) if prune else []
    embedding = embedding or build_embedding(settings)
    own_store = store is None
    store = store or open_store(settings, embedding)
    try:
        fields = store.use_text_fields(text_fields)
        if not store.has_text_index:
            logger.warning(
                "collection %r has no text index: keyword and hybrid search need "
                "`mmsearch reindex` (adds it from the stored metadata, no re-embedding)",
                store.collection,
            )
        report = Ingestor(
            embedding=embedding,
            store=store,
            batch_size=embedding.embed_batch_size,
            workers=workers,
            cache_dir=settings.data_dir / "cache" / "urls",
            progress=progress,
            text_fields=fields,
            allow_private_urls=settings.allow_private_urls,
        ).run(items, prune_sources=sources)
        rows = store.count()
    finally:
        if own_store:
            store.close()
    return IngestResult(report, rows)


def _ingest_on_ray(
    settings: Settings,
    items: Sequence[CatalogItem],
    options: RayOptions,
    *,
    prune: bool,
    progress: Progress | None,
    store: CatalogStore | None,
    text_fields: Sequence[str] | None,
) -> IngestResult:
    """:func:`ingest_items` on Ray: the driver reads the model's id and dimension from its
    directory (no weights) to open the collection; the workers load the model."""
    from ingestion.distributed import import_ray, ingest_on_ray
    from rag.embedding.checkpoint import read_model_facts
    from rag.embedding.hub import resolve_embed_model_dir
    from rag.factory import open_store

    import_ray()  # a missing extra fails before anything else
    sources = sorted({item.source for item in items}) if prune else []
    model_dir = resolve_embed_model_dir(settings.embed_model, settings.models_dir)
    model_id, dim, _ = read_model_facts(model_dir)
    own_store = store is None
    store = store or open_store(settings, model_id=model_id, dim=dim)
    try:
        fields = store.use_text_fields(text_fields)
        report = ingest_on_ray(
            items,
            store=store,
            model_dir=model_dir.resolve(),
            token=settings.milvus_token_value,
            device=settings.device,
            dtype=settings.dtype,
            batch_size=settings.embed_batch_size,
            cache_dir=(settings.data_dir / "cache" / "urls").resolve(),
            options=options,
            progress=progress,
            prune_sources=sources,
            text_fields=fields,
            allow_private_urls=settings.allow_private_urls,
        )
        rows = store.count()
    finally:
        if own_store:
            store.close()
    return IngestResult(report, rows)
