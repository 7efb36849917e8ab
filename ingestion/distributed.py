"""Distributed ingestion on Ray Data: the local pipeline's stages, spread over a Ray cluster.

The stages are the local pipeline's own functions (``ingestion/pipeline.py``), so row ids, the
report, skipping unchanged items and crash safety are the same:

1. fingerprint (Ray tasks): fetch URL images, hash the bytes, derive the row id;
2. classify (driver): unchanged items are skipped before anything is decoded;
3. decode + preprocess (Ray tasks on CPU workers);
4. embed (a Ray actor pool, one model per actor: one GPU per actor on a GPU cluster, CPU actors
   otherwise);
5. write: on a Milvus server the workers upsert their batches themselves; Milvus Lite is one
   process, so the embeddings stream back to the driver, which writes them. A row that a
   changed image replaces is deleted by the driver only after the new row is stored.

Every write is an upsert of complete rows, so a run killed at any point and started again
ends with the rows of a clean run. Needs the ``distributed`` extra (``ray[data]``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ingestion.pipeline import (
    Fingerprint,
    IngestReport,
    Progress,
    classify,
    decode,
    display_path,
    failure,
    fingerprint,
    image_node,
    prune,
    record_stored,
    unique_items,
)
from ingestion.sources import CatalogItem
from rag.core.fetch import fetch
from rag.errors import ConfigError, DistributedError, InputImageError, MMSearchError
from rag.store.schema import DEFAULT_TEXT_FIELDS

if TYPE_CHECKING:
    from rag.store.milvus import CatalogStore

logger = logging.getLogger(__name__)

EXTRA_HINT = "install the extra: pip install 'mmsearch[distributed]'"
_ITEM_COLUMNS = ("key", "image", "source", "meta")
_FP_COLUMNS = ("local_path", "sha", "id", "error")


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray.

    Attributes:
        address: the cluster (``auto``, ``ray://head:10001``, ``host:6379``, ``local``); None
            uses Ray's default: a running local cluster or ``RAY_ADDRESS``, else a new local one.
        actors: embedding actors (None: one per GPU on a GPU cluster, else one per spare CPU).
        gpus_per_actor: None: 1 on a cluster with GPUs, 0 (CPU actors) otherwise.
        actor_cpus: CPUs reserved per embedding actor (its torch threads).
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    actor_cpus: float = 1.0


def import_ray() -> Any:
    """Ray, or a one-line error naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is a separate part of the wheel)
    except ImportError as e:
        raise DistributedError(f"distributed ingestion needs Ray ({e}); {EXTRA_HINT}") from e
    return ray


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Use the running Ray session, or start / join one for the block (and leave it after)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phone-home from a CLI run
    _check_reachable(address)
    for attempt in (1, 2):
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
            break
        except Exception as e:  # ConnectionError, ValueError, RuntimeError ... all mean "no Ray"
            ray.shutdown()
            # A busy machine can miss the fixed 30 s Ray gives a new local node to start.
            if attempt == 1 and "timed out during startup" in str(e):
                continue
            where = address or "the default address (a local cluster or RAY_ADDRESS)"
            raise DistributedError(f"cannot start or reach Ray at {where}: {_first_line(e)}") from e
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str | None) -> None:
    """Fail fast on a cluster address nobody listens on: ``ray.init`` retries such an address
    for minutes."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"Ray address {address!r} is not auto, local, host:port or ray://host:port"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise DistributedError(f"cannot reach Ray at {address}: {e}") from e


def _quiet_data_context(ray: Any) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the caller has its own progress reporting
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


# -- rows as Ray Data columns -------------------------------------------------------------
def _item_row(item: CatalogItem) -> dict[str, Any]:
    meta = json.dumps(item.metadata, ensure_ascii=False, default=str)
    return {"key": item.key, "image": item.image, "source": item.source, "meta": meta}


def _item(row: dict[str, Any]) -> CatalogItem:
    return CatalogItem(
        key=str(row["key"]),
        image=str(row["image"]),
        source=str(row["source"]),
        metadata=json.loads(str(row["meta"])),
    )


def _fingerprint_of(row: dict[str, Any]) -> Fingerprint:
    return Fingerprint(_item(row), str(row["local_path"]), str(row["sha"]), str(row["id"]))


def _rows(batch: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    n = len(batch["key"])
    for i in range(n):
        yield {k: v[i] for k, v in batch.items()}


def _columns(rows: Sequence[dict[str, Any]], names: Iterable[str]) -> dict[str, np.ndarray]:
    return {name: np.array([str(r[name]) for r in rows], dtype=object) for name in names}


# -- Ray stages (run on workers) ----------------------------------------------------------
def fingerprint_batch(
    batch: dict[str, np.ndarray], cache_dir: str, allow_private: bool = False
) -> dict[str, np.ndarray]:
    """Stage 1 on a worker: :func:`ingestion.pipeline.fingerprint` per row; a bad item keeps
    its reason in ``error``."""
    out = []
    for row in _rows(batch):
        item = _item(row)
        try:
            fp = fingerprint(item, Path(cache_dir), allow_private=allow_private)
            out.append(
                {**row, "local_path": fp.local_path, "sha": fp.sha, "id": fp.id, "error": ""}
            )
        except InputImageError as e:
            out.append(
                {**row, "local_path": "", "sha": "", "id": "", "error": failure(item, e)["error"]}
            )
    return _columns(out, _ITEM_COLUMNS + _FP_COLUMNS)


def decode_batch(
    batch: dict[str, np.ndarray], size: int, cache_dir: str, allow_private: bool = False
) -> dict[str, np.ndarray]:
    """Stage 3 on a CPU worker: :func:`ingestion.pipeline.decode` per row, pixels as a tensor
    column (uint8, normalised on the embedding actor's device; zeros for a row that failed,
    which keeps its reason in ``error``)."""
    rows, pixels = [], []
    for row in _rows(batch):
        fp = _fingerprint_of(row)
        if fp.item.is_url and not Path(fp.local_path).is_file():
            # another node fetched it: fetch (or reuse) this node's copy
            local = fetch(fp.item.image, Path(cache_dir), allow_private=allow_private)
            fp = replace(fp, local_path=str(local))
        px = np.zeros((3, size, size), dtype=np.uint8)
        error = ""
        try:
            fp, tensor = decode(fp, size)
            px = tensor.numpy()
        except MMSearchError as e:
            error = failure(fp.item, e)["error"]
        rows.append(
            {**row, "local_path": fp.local_path, "sha": fp.sha, "id": fp.id, "error": error}
        )
        pixels.append(px)
    cols = _columns(rows, _ITEM_COLUMNS + _FP_COLUMNS)
    cols["pixels"] = np.stack(pixels)
    return cols


def _fatal(e: BaseException) -> str:
    """A run-ending error as data: Ray keeps only a traceback text of a worker's exception, so
    stages hand ``ErrorClass<TAB>one-line message`` to the driver in the ``fatal`` column."""
    if isinstance(e, MMSearchError):
        return f"{type(e).__name__}\t{_first_line(e)}"
    return f"DistributedError\tRay worker failed: {type(e).__name__}: {_first_line(e)}"


def raise_fatal(batch: dict[str, np.ndarray]) -> None:
    """Raise the first run-ending error a stage reported in ``batch`` (see :func:`_fatal`)."""
    import rag.errors

    for value in batch.get("fatal", ()):
        if value:
            name, _, message = str(value).partition("\t")
            cls = getattr(rag.errors, name, DistributedError)
            if not (isinstance(cls, type) and issubclass(cls, MMSearchError)):
                cls = DistributedError
            raise cls(message)


class Embedder:
    """Stage 4, a Ray actor: one model, loaded once, embeds pixel batches. A model that cannot
    load is reported in the ``fatal`` column of every batch."""

    def __init__(
        self, model_dir: str, device: str, dtype: str, model_id: str, dim: int, threads: int
    ) -> None:
        self.dim = dim
        self.problem = ""
        try:
            self._load(model_dir, device, dtype, model_id, threads)
        except Exception as e:
            self.problem = _fatal(e)

    def _load(self, model_dir: str, device: str, dtype: str, model_id: str, threads: int) -> None:
        import torch

        from rag.embedding.multimodal import VisualizedBGEEmbedding

        torch.set_num_threads(max(1, threads))
        self.embedding = VisualizedBGEEmbedding.from_local(model_dir, device=device, dtype=dtype)
        if self.embedding.model_name != model_id:
            raise ConfigError(
                f"the model at {model_dir} on this Ray worker is {self.embedding.model_name!r}, "
                f"the driver's is {model_id!r}: every node needs the same model directory"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in batch.items() if k != "pixels"}
        n = len(batch["key"])
        out["fatal"] = np.array([self.problem] * n, dtype=object)
        if self.problem:
            out["vector"] = np.zeros((n, self.dim), dtype=np.float32)
            return out
        try:
            out["vector"] = self._vectors(batch)
        except Exception as e:  # out of memory, a CUDA error: the run cannot go on
            out["fatal"][:] = _fatal(e)
            out["vector"] = np.zeros((n, self.dim), dtype=np.float32)
        return out

    def _vectors(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        ok = np.array([not e for e in batch["error"]], dtype=bool)
        vectors = np.zeros((len(ok), self.embedding.dim), dtype=np.float32)
        if ok.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            vectors[ok] = np.asarray(self.embedding.embed_pixels(pixels), dtype=np.float32)
        return vectors


def nodes_of(
    rows: Iterable[dict[str, Any]], text_fields: Sequence[str]
) -> tuple[list[Fingerprint], list[Any]]:
    """Fingerprints and stored rows (:func:`ingestion.pipeline.image_node`) of embedded rows."""
    prints, nodes = [], []
    for row in rows:
        fp = _fingerprint_of(row)
        prints.append(fp)
        nodes.append(image_node(fp, [float(x) for x in row["vector"]], text_fields))
    return prints, nodes


class ServerWriter:
    """Stage 5 on a Milvus server, a Ray actor: upserts embedded rows straight from the worker.
    A failed write (server gone) ends the run, as in the local pipeline."""

    def __init__(self, uri: str, token: str, collection: str, text_fields: Sequence[str]) -> None:
        from rag.store.milvus import connect
        from rag.store.vector_store import CatalogVectorStore

        self.where = f"collection {collection!r} at {uri!r}"  # for error messages
        self.problem = ""
        self.text_fields = tuple(text_fields)
        try:
            self.store = CatalogVectorStore(client=connect(uri, token), collection_name=collection)
        except Exception as e:
            self.problem = _fatal(e)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from rag.store.milvus import call_with_reconnect

        rows = list(_rows(batch))
        out = _columns(rows, _ITEM_COLUMNS + _FP_COLUMNS + ("fatal",))
        if self.problem or any(out["fatal"]):
            out["fatal"][:] = self.problem or next(f for f in out["fatal"] if f)
            return out
        _, nodes = nodes_of((r for r in rows if not r["error"]), self.text_fields)
        try:
            if nodes:
                call_with_reconnect(self.where, "write rows", lambda: self.store.add(nodes))
        except MMSearchError as e:  # a dead server fails the run, like a local write does
            out["fatal"][:] = _fatal(e)
        return out


# -- the driver -----------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


class _Counter:
    """Finished items, reported to the progress callback as (done, total)."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def add(self, n: int = 1) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


def _ray_failure(e: BaseException) -> DistributedError:
    """One line for a failure Ray raised itself (a worker process died, the cluster went away);
    errors of our own code arrive as data (:func:`raise_fatal`)."""
    inner: BaseException = e
    for _ in range(10):
        nxt = getattr(inner, "cause", None) or inner.__cause__
        if not isinstance(nxt, BaseException) or nxt is inner:
            break
        inner = nxt
    return DistributedError(
        f"Ray ingestion failed ({type(inner).__name__}: {_first_line(inner)}); "
        "see the Ray logs (/tmp/ray/session_latest/logs)"
    )


def _blocks(n: int, cpus: float, batch_size: int) -> int:
    """Blocks for ``n`` rows: several per CPU so tasks spread, none smaller than a batch."""
    per_block = max(batch_size, min(256, -(-n // max(1, int(4 * cpus)))))
    return max(1, -(-n // per_block))


def _pool_shape(ray: Any, options: RayOptions) -> tuple[int, float, float]:
    """(actors, GPUs per actor, CPUs per actor) for the embedding pool on this cluster."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    per_gpu = options.gpus_per_actor
    if per_gpu is None:
        per_gpu = 1.0 if gpus >= 1 else 0.0
    if options.actors is not None:
        n = options.actors
    elif per_gpu:
        n = max(1, int(gpus // per_gpu))
    else:
        n = max(1, int((cpus - 1) // options.actor_cpus))
    if n < 1 or n * options.actor_cpus > cpus - 1:
        # Ray would wait forever for a CPU to run the decode tasks on.
        raise ConfigError(
            f"the Ray cluster has {cpus:g} CPUs: {n} embedding actors x {options.actor_cpus:g} "
            "CPUs leave none for decoding; use fewer actors or fewer CPUs per actor"
        )
    return n, per_gpu, options.actor_cpus


def _fingerprints(
    ray: Any,
    items: list[CatalogItem],
    cache_dir: Path,
    batch_size: int,
    report: IngestReport,
    counter: _Counter,
    allow_private: bool = False,
) -> list[Fingerprint]:
    """Stage 1 on the cluster; bad items go straight into the report."""
    if not items:
        return []
    cpus = float(ray.cluster_resources().get("CPU", 1))
    ds = ray.data.from_items(
        [_item_row(i) for i in items], override_num_blocks=_blocks(len(items), cpus, batch_size)
    ).map_batches(
        fingerprint_batch,
        fn_kwargs={"cache_dir": str(cache_dir), "allow_private": allow_private},
        batch_format="numpy",
    )
    prints = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for row in _rows(batch):
            if row["error"]:
                report.failed.append(
                    {"path": display_path(str(row["image"])), "error": str(row["error"])}
                )
                counter.add()
            else:
                prints.append(_fingerprint_of(row))
    return prints


@dataclass
class _Job:
    """What the embed-and-write stage needs besides the items."""

    store: CatalogStore
    token: str
    model_dir: Path
    model_id: str
    dim: int
    image_size: int
    device: str
    dtype: str
    batch_size: int
    cache_dir: Path
    options: RayOptions
    text_fields: tuple[str, ...]
    allow_private_urls: bool


def _embedded(ray: Any, todo: list[Fingerprint], job: _Job) -> Any:
    """The dataset of stages 3-5: decoded, embedded and, on a server, written by workers."""
    from rag.store.milvus import is_lite_uri

    n_actors, gpus, cpus = _pool_shape(ray, job.options)
    rows = [
        {**_item_row(fp.item), "local_path": fp.local_path, "sha": fp.sha, "id": fp.id, "error": ""}
        for fp in todo
    ]
    total_cpus = float(ray.cluster_resources().get("CPU", 1))
    ds = ray.data.from_items(
        rows, override_num_blocks=_blocks(len(rows), total_cpus, job.batch_size)
    ).map_batches(
        decode_batch,
        fn_kwargs={
            "size": job.image_size,
            "cache_dir": str(job.cache_dir),
            "allow_private": job.allow_private_urls,
        },
        batch_size=job.batch_size,
        batch_format="numpy",
        num_cpus=1,
        # Room for a batch of pixels (twice, while stacking). Ray Data fuses consecutive stages
        # with equal resource requests; this one differs from the embedding actors', so
        # decoding stays on its own CPU tasks instead of running inside the actors.
        memory=2 * job.batch_size * 3 * job.image_size**2,
    )
    ds = ds.map_batches(
        Embedder,
        fn_constructor_kwargs={
            "model_dir": str(job.model_dir),
            "device": job.device,
            "dtype": job.dtype,
            "model_id": job.model_id,
            "dim": job.dim,
            "threads": int(cpus),
        },
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_gpus=gpus,
        num_cpus=cpus,
        batch_size=job.batch_size,
        batch_format="numpy",
    )
    if not is_lite_uri(job.store.uri):
        ds = ds.map_batches(
            ServerWriter,
            fn_constructor_kwargs={
                "uri": job.store.uri,
                "token": job.token,
                "collection": job.store.collection,
                "text_fields": job.text_fields,
            },
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=0,  # waits on the network; must not take a CPU from the decode tasks
            batch_size=None,
            batch_format="numpy",
        )
    return ds


def _embed_and_write(
    ray: Any,
    todo: list[Fingerprint],
    stale: dict[str, list[str]],
    job: _Job,
    report: IngestReport,
    counter: _Counter,
) -> None:
    """Stages 3-5; the driver writes (Milvus Lite) or only records what workers wrote."""
    from rag.store.milvus import is_lite_uri

    driver_writes = is_lite_uri(job.store.uri)
    ds = _embedded(ray, todo, job)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        raise_fatal(batch)
        rows = list(_rows(batch))
        for row in rows:
            if row["error"]:
                report.failed.append(
                    {"path": display_path(str(row["image"])), "error": str(row["error"])}
                )
        ok = [r for r in rows if not r["error"]]
        if driver_writes:
            prints, nodes = nodes_of(ok, job.text_fields)
            if nodes:
                job.store.call("write rows", partial(job.store.vector_store.add, nodes))
        else:
            prints = [_fingerprint_of(r) for r in ok]
        record_stored(job.store, prints, stale, report)
        counter.add(len(rows))


def _default_batch_size(ray: Any) -> int:
    """The embedding batch when not set: as for one machine, by whether the cluster has GPUs."""
    from rag.embedding.multimodal import default_batch_size

    return default_batch_size("cuda" if ray.cluster_resources().get("GPU", 0) else "cpu")


def ingest_on_ray(
    items: Iterable[CatalogItem],
    *,
    store: CatalogStore,
    model_dir: Path,
    token: str = "",
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int | None = None,
    cache_dir: Path | None = None,
    options: RayOptions | None = None,
    progress: Progress | None = None,
    prune_sources: Iterable[str] = (),
    text_fields: Sequence[str] = DEFAULT_TEXT_FIELDS,
    allow_private_urls: bool = False,
) -> IngestReport:
    """Index ``items`` into ``store`` on a Ray cluster; the same report and rows as
    :class:`ingestion.pipeline.Ingestor`.

    Args:
        items: what to index.
        store: the open collection (created for the model in ``model_dir``); on a server the
            workers connect to ``store.uri`` with ``token`` themselves.
        model_dir: the embedding model directory; the same path must exist on every node.
        token: the server token for the workers ('' for none).
        device, dtype: for the embedding actors (``auto``: a GPU actor uses its GPU).
        batch_size: images per decode task and per forward pass (None: 64 on a cluster with
            GPUs, 16 otherwise, as :func:`rag.embedding.multimodal.default_batch_size`).
        cache_dir: where URL images are cached (on each node).
        options: the cluster and the actor pool (:class:`RayOptions`).
        progress: called with (done, total) as items finish.
        prune_sources: also drop rows of these sources whose item is no longer listed.
        text_fields: catalog fields that make each row's search text.
        allow_private_urls: also fetch image URLs on private addresses (SSRF guard opt-out).
    """
    from rag.embedding.checkpoint import read_model_facts

    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be > 0, got {batch_size}")
    started = time.perf_counter()
    options = options or RayOptions()
    model_id, dim, size = read_model_facts(model_dir)
    cache_dir = cache_dir or Path("./data/cache/urls")
    report = IngestReport()
    unique = unique_items(items, report)
    counter = _Counter(progress, len(unique) + len(report.failed))
    counter.add(len(report.failed))
    with ray_session(options.address) as ray:
        _quiet_data_context(ray)
        job = _Job(
            store=store,
            token=token,
            model_dir=model_dir,
            model_id=model_id,
            dim=dim,
            image_size=size,
            device=device,
            dtype=dtype,
            batch_size=batch_size or _default_batch_size(ray),
            cache_dir=cache_dir,
            options=options,
            text_fields=tuple(text_fields),
            allow_private_urls=allow_private_urls,
        )
        try:
            prints = _fingerprints(
                ray,
                list(unique.values()),
                cache_dir,
                job.batch_size,
                report,
                counter,
                allow_private=allow_private_urls,
            )
            todo, stale = classify(store, prints, report, counter.add)
            if todo:
                _embed_and_write(ray, todo, stale, job, report, counter)
        except MMSearchError:
            raise
        except Exception as e:  # Ray's own failures (a worker process died, ...)
            raise _ray_failure(e) from e
    for source in prune_sources:
        report.pruned += prune(store, source, set(unique))
    if report.embedded or report.pruned or report.replaced:
        store.flush()
    report.seconds = time.perf_counter() - started
    return report
