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
    workers: int = 2,
    prune: bool = False,
    progress: Progress | None = None,
    embedding: VisualizedBGEEmbedding | None = None,
    store: CatalogStore | None = None,
    text_fields: Sequence[str] | None = None,
) -> IngestResult:
    """Index ``items`` into the configured collection.

    Args:
        settings: where to write and with which model.
        items: what to index (see :func:`list_items`).
        workers: decode / download threads.
        prune: also drop rows of the same sources whose item is gone.
        progress: called with (done, total).
        embedding, store: ready components; a store passed in stays open.
        text_fields: catalog fields that make the search text (``None``: the collection's
            recorded fields, title + description for a new one).
    """
    from rag.factory import build_embedding, open_store

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
            batch_size=settings.embed_batch_size,
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
