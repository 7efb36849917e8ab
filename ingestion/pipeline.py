"""The ingestion pipeline: catalog items -> fingerprints -> decoded batches -> embeddings -> Milvus.

Idempotent and resumable by construction:
* a row's id is ``sha256(item key + image content hash)``, so re-ingesting an unchanged image
  is recognised before any decoding or embedding, and a changed image gets a new id;
* rows are upserted (a repeated id overwrites itself) and every write is durable when it
  returns, so a run killed at any point and started again converges on the clean-run rows;
* the old row of a changed image is deleted only after its replacement is stored, so a crash
  never loses an item; a leftover old row is removed by the next run.

Decoding/preprocessing runs in worker threads ahead of the embedding (a bounded window), so
the model never waits on disk or PIL.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingestion.sources import CatalogItem
from rag.core.fetch import fetch
from rag.core.images import content_sha256, load_image, read_bytes
from rag.embedding.preprocess import preprocess_uint8
from rag.errors import ConfigError, InputImageError, MMSearchError
from rag.store.schema import DEFAULT_TEXT_FIELDS
from rag.store.text import catalog_text, parse_text_fields

if TYPE_CHECKING:
    from llama_index.core.schema import ImageNode

    from rag.embedding.multimodal import VisualizedBGEEmbedding
    from rag.store.milvus import CatalogStore

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
_LOOKUP_CHUNK = 500


def default_workers(device: str) -> int:
    """Decode/download threads when not set. On a CPU the model needs the cores: decoding a
    photo takes ~5 ms on one thread vs ~240 ms of bf16 model time per image (2-core EPYC,
    benchmarks/results/dtype.json), so 2 threads keep it fed and rarely run; torch keeps its
    default of one thread per core. On a GPU the model outruns one core's decoding by far:
    every core decodes (threads: PIL releases the GIL; spawned processes measured 3x slower
    than threads on 2 cores, from pickling the pixels back), up to 32."""
    import os

    if device.startswith("cuda"):
        return max(2, min(32, os.cpu_count() or 2))
    return 2


def row_id(key: str, sha: str) -> str:
    """The row id: stable for the same item and content, new when the image changes."""
    return hashlib.sha256(f"{key}\0{sha}".encode()).hexdigest()[:32]


@dataclass
class IngestReport:
    """What an ingest did; ``--json`` prints :meth:`to_dict`."""

    added: int = 0
    unchanged: int = 0
    replaced: int = 0
    pruned: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    embedded: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "unchanged": self.unchanged,
            "replaced": self.replaced,
            "pruned": self.pruned,
            "failed": list(self.failed),
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.embedded / self.seconds, 2) if self.seconds else 0.0,
        }


@dataclass
class Fingerprint:
    """Where an item's image is and what is in it: the row id follows from the content."""

    item: CatalogItem
    local_path: str
    sha: str
    id: str


def display_path(path: str) -> str:
    """A printable form of a path whose bytes are not valid UTF-8 (b'caf\\xe9' -> 'caf\\xe9')."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _reason(err: Exception, label: str) -> str:
    text = str(err)
    return display_path(text[len(label) + 2 :] if text.startswith(label + ": ") else text)


# -- the stages, shared by the local pipeline and the Ray one (ingestion/distributed.py) ------
def fingerprint(item: CatalogItem, cache_dir: Path, *, allow_private: bool = False) -> Fingerprint:
    """Stage 1: fetch a URL into the cache (private addresses only with ``allow_private``:
    the SSRF guard of ``rag.core.fetch``), hash the image bytes, derive the row id."""
    try:
        item.key.encode("utf-8")
    except UnicodeEncodeError as e:
        # Milvus stores UTF-8 strings only; a lossy key would break idempotency.
        raise InputImageError(f"{item.image}: file name is not valid UTF-8; rename the file") from e
    local = (
        str(fetch(item.image, cache_dir, allow_private=allow_private))
        if item.is_url
        else item.image
    )
    sha = content_sha256(read_bytes(local))
    return Fingerprint(item, local, sha, row_id(item.key, sha))


def decode(fp: Fingerprint, size: int) -> tuple[Fingerprint, Any]:
    """Stage 2: read, decode, resize and crop to uint8 pixels (normalised later, on the
    model's device); an image changed since stage 1 gets the id of what was actually decoded."""
    data = read_bytes(fp.local_path)
    sha = content_sha256(data)
    if sha != fp.sha:  # changed since stage 1: index what we actually decoded
        fp = Fingerprint(fp.item, fp.local_path, sha, row_id(fp.item.key, sha))
    img = load_image(data, name=fp.item.image)
    return fp, preprocess_uint8(img, size)


def image_node(
    fp: Fingerprint, vector: list[float], text_fields: Sequence[str] = DEFAULT_TEXT_FIELDS
) -> ImageNode:
    """The stored row of one item: the one place that turns (item, vector) into a node, for
    every ingestion path. The node's text is the catalog text of ``text_fields``
    (BM25-indexed by the collection; '' for items without text)."""
    from llama_index.core.schema import ImageNode

    item = fp.item
    meta: dict[str, Any] = {
        **item.metadata,
        "item_key": item.key,
        "image_path": item.image,
        "local_path": fp.local_path,
        "source": item.source,
        "content_sha256": fp.sha,
    }
    return ImageNode(
        id_=fp.id,
        text=catalog_text(item.metadata, text_fields),
        image_path=fp.local_path,
        image_url=item.image if item.is_url else None,
        metadata=meta,
        embedding=vector,
        excluded_embed_metadata_keys=list(meta),
        excluded_llm_metadata_keys=["local_path", "content_sha256", "source"],
    )


def unique_items(items: Iterable[CatalogItem], report: IngestReport) -> dict[str, CatalogItem]:
    """Items by key; a repeated key is reported, not indexed twice."""
    unique: dict[str, CatalogItem] = {}
    for item in items:
        if item.key in unique:
            report.failed.append(
                {"path": display_path(item.image), "error": f"duplicate key {item.key!r}"}
            )
            continue
        unique[item.key] = item
    return unique


def failure(item: CatalogItem, err: Exception) -> dict[str, str]:
    """The report entry of a skipped item: its path and the reason, without the repeated path."""
    return {"path": display_path(item.image), "error": _reason(err, item.image)}


def report_failure(report: IngestReport, item: CatalogItem, err: Exception) -> None:
    report.failed.append(failure(item, err))


def classify(
    store: CatalogStore,
    prints: list[Fingerprint],
    report: IngestReport,
    done: Callable[[int], None],
) -> tuple[list[Fingerprint], dict[str, list[str]]]:
    """Split into items to embed and unchanged ones; returns (todo, stale) where stale maps
    a key to the ids to delete once its new row is stored. ``done(n)`` counts finished items."""
    todo: list[Fingerprint] = []
    stale: dict[str, list[str]] = {}
    for start in range(0, len(prints), _LOOKUP_CHUNK):
        chunk = prints[start : start + _LOOKUP_CHUNK]
        existing = store.rows_by_key([fp.item.key for fp in chunk])
        for fp in chunk:
            ids = existing.get(fp.item.key, [])
            others = [i for i in ids if i != fp.id]
            if fp.id not in ids:
                if others:
                    stale[fp.item.key] = others
                todo.append(fp)
                continue
            if others:  # an interrupted replacement: finish it
                store.delete_ids(others)
                report.replaced += 1
            else:
                report.unchanged += 1
            done(1)
    return todo, stale


def record_stored(
    store: CatalogStore,
    prints: list[Fingerprint],
    stale: dict[str, list[str]],
    report: IngestReport,
) -> None:
    """After the rows of ``prints`` are stored: delete the rows they replace (only now, so a
    crash never loses an item) and count them."""
    report.embedded += len(prints)
    for fp in prints:
        old = stale.pop(fp.item.key, None)
        if old:
            store.delete_ids(old)
            report.replaced += 1
        else:
            report.added += 1


def prune(store: CatalogStore, source: str, keep: set[str]) -> int:
    """Delete the rows of ``source`` whose item key is not in ``keep``."""
    gone = {k: ids for k, ids in store.keys_for_source(source).items() if k not in keep}
    return store.delete_ids([i for ids in gone.values() for i in ids])


class _Ticker:
    """Counts finished items and reports (done, total) to the progress callback."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.done = self.total = 0

    def add(self, n: int = 1) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


class Ingestor:
    """Indexes catalog items into one collection.

    Args:
        embedding: the Visualized BGE embedding (image-only vectors are stored).
        store: the target collection.
        batch_size: images per forward pass.
        workers: threads that read/download/decode ahead of the model (None:
            :func:`default_workers` of the model's device).
        cache_dir: where URL images are cached.
        progress: called with (done, total) as items finish.
        text_fields: catalog fields that make each row's search text.
        allow_private_urls: also fetch image URLs on private, loopback and link-local
            addresses (off: the SSRF guard of ``rag.core.fetch`` refuses them).
    """

    def __init__(
        self,
        *,
        embedding: VisualizedBGEEmbedding,
        store: CatalogStore,
        batch_size: int = 16,
        workers: int | None = None,
        cache_dir: Path | None = None,
        progress: Progress | None = None,
        text_fields: Sequence[str] = DEFAULT_TEXT_FIELDS,
        allow_private_urls: bool = False,
    ) -> None:
        workers = workers if workers is not None else default_workers(embedding.device)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be > 0, got {batch_size}")
        if workers < 1:
            raise ConfigError(f"workers must be > 0, got {workers}")
        self.embedding = embedding
        self.store = store
        self.batch_size = batch_size
        self.workers = workers
        self.cache_dir = cache_dir or Path("./data/cache/urls")
        self.progress = progress
        self.text_fields = parse_text_fields(text_fields)
        self.allow_private_urls = allow_private_urls
        self._size = embedding.model.vision_config.image_size

    # -- stage 1: where is each image, what is in it ------------------------------------
    def _fingerprint(self, item: CatalogItem) -> Fingerprint:
        return fingerprint(item, self.cache_dir, allow_private=self.allow_private_urls)

    # -- stage 2: decode + preprocess (worker threads) ------------------------------------
    def _decode(self, fp: Fingerprint) -> tuple[Fingerprint, Any]:
        return decode(fp, self._size)

    def run(
        self, items: Iterable[CatalogItem], *, prune_sources: Iterable[str] = ()
    ) -> IngestReport:
        """Index ``items``; with ``prune_sources``, also drop rows of those sources whose item
        is no longer listed. Bad items are skipped and reported, never fatal."""
        started = time.perf_counter()
        report = IngestReport()
        ticker = _Ticker(self.progress)
        unique = self._unique(items, report)
        ticker.total = len(unique) + len(report.failed)
        ticker.add(len(report.failed))
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ingest") as pool:
            prints = self._fingerprint_all(pool, list(unique.values()), report, ticker)
            todo, stale = self._classify(prints, report, ticker)
            self._embed_all(pool, todo, stale, report, ticker)
        for source in prune_sources:
            report.pruned += self._prune(source, set(unique))
        if report.embedded or report.pruned or report.replaced:
            self.store.flush()
        report.seconds = time.perf_counter() - started
        return report

    @staticmethod
    def _unique(items: Iterable[CatalogItem], report: IngestReport) -> dict[str, CatalogItem]:
        return unique_items(items, report)

    def _fingerprint_all(
        self,
        pool: ThreadPoolExecutor,
        items: list[CatalogItem],
        report: IngestReport,
        ticker: _Ticker,
    ) -> list[Fingerprint]:
        prints: list[Fingerprint] = []
        for item, fut in [(it, pool.submit(self._fingerprint, it)) for it in items]:
            try:
                prints.append(fut.result())
            except InputImageError as e:
                report_failure(report, item, e)
                ticker.add()
        return prints

    def _classify(
        self, prints: list[Fingerprint], report: IngestReport, ticker: _Ticker
    ) -> tuple[list[Fingerprint], dict[str, list[str]]]:
        return classify(self.store, prints, report, ticker.add)

    def _prune(self, source: str, keep: set[str]) -> int:
        return prune(self.store, source, keep)

    def _embed_all(
        self,
        pool: ThreadPoolExecutor,
        todo: list[Fingerprint],
        stale: dict[str, list[str]],
        report: IngestReport,
        ticker: _Ticker,
    ) -> None:
        import torch

        window = max(2 * self.batch_size, 4 * self.workers)
        pending: deque[tuple[Fingerprint, Future[tuple[Fingerprint, Any]]]] = deque()
        queue = iter(todo)
        batch: list[tuple[Fingerprint, Any]] = []

        def refill() -> None:
            while len(pending) < window:
                fp = next(queue, None)
                if fp is None:
                    return
                pending.append((fp, pool.submit(self._decode, fp)))

        refill()
        while pending:
            fp, fut = pending.popleft()
            refill()
            try:
                batch.append(fut.result())
            except MMSearchError as e:
                report_failure(report, fp.item, e)
                ticker.add()
            if len(batch) == self.batch_size or (not pending and batch):
                vectors = self.embedding.embed_pixels(torch.stack([t for _, t in batch]))
                self._store_batch([f for f, _ in batch], vectors, stale, report)
                ticker.add(len(batch))
                batch = []

    def _store_batch(
        self,
        prints: list[Fingerprint],
        vectors: list[list[float]],
        stale: dict[str, list[str]],
        report: IngestReport,
    ) -> None:
        nodes = [
            image_node(fp, vec, self.text_fields) for fp, vec in zip(prints, vectors, strict=True)
        ]
        # Pre-embedded nodes go straight to the LlamaIndex vector store: a
        # MultiModalVectorStoreIndex would write every node that has text twice (once to its
        # text store, once to its image store; here both are this collection).
        self.store.call("write rows", lambda: self.store.vector_store.add(nodes))
        record_stored(self.store, prints, stale, report)
