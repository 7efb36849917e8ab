"""POST /api/ingest and GET /api/ingest/{job}: ingest a catalog in the background.

The server process holds the Milvus Lite file, so ingestion runs inside it: the same
``ingestion.service.ingest_items`` as ``mmsearch ingest``, with the server's embedding and
store. Jobs run one at a time (in order); searches go on meanwhile. The catalog is a path
on the server, or an uploaded JSONL/CSV (whose image paths must then be absolute or URLs).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from rag.app.server.errors import one_line
from rag.app.server.security import check_key, too_large_message
from rag.app.server.state import get_state
from rag.errors import ConfigError, MMSearchError, NotFoundError, PayloadTooLargeError

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/ingest", tags=["ingest"])

JobStatus = Literal["queued", "running", "done", "failed"]
# (items, prune, progress(done, total)) -> ingestion.service.IngestResult
Runner = Callable[[Sequence[Any], bool, Callable[[int, int], None]], Any]
_CATALOG_SUFFIXES = (".jsonl", ".ndjson", ".csv")


@dataclass
class Job:
    """One ingest job and what it has done so far."""

    id: str
    source: str
    items: int
    prune: bool
    status: JobStatus = "queued"
    done: int = 0
    total: int = 0
    created: float = field(default_factory=time.time)
    finished: float | None = None
    report: dict[str, Any] | None = None
    rows: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.id,
            "status": self.status,
            "source": self.source,
            "items": self.items,
            "prune": self.prune,
            "done": self.done,
            "total": self.total or self.items,
            "report": self.report,
            "rows": self.rows,
            "error": self.error,
            "url": f"/api/ingest/{self.id}",
        }


class IngestJobs:
    """Queued ingest jobs run one at a time on a worker thread; the last ``keep`` are kept."""

    def __init__(self, runner: Runner | None, *, keep: int = 100) -> None:
        self.runner = runner
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmsearch-ingest")

    def submit(self, items: Sequence[Any], source: str, prune: bool) -> Job:
        if self.runner is None:
            raise ConfigError("ingest is not available on this server")
        job = Job(id=uuid.uuid4().hex[:16], source=source, items=len(items), prune=prune)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self.keep:
                self._jobs.popitem(last=False)
        self._pool.submit(self._run, job, items)
        return job

    def _run(self, job: Job, items: Sequence[Any]) -> None:
        assert self.runner is not None
        job.status = "running"

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            result = self.runner(items, job.prune, progress)
            job.report, job.rows = result.report.to_dict(), result.rows
            job.status = "done"
        except MMSearchError as e:
            job.error, job.status = one_line(str(e)), "failed"
        except Exception as e:  # a bug must not kill the worker; the log has the traceback
            logger.exception("ingest job %s failed", job.id)
            job.error, job.status = (
                f"internal error ({type(e).__name__}); see the server log",
                "failed",
            )
        finally:
            job.finished = time.time()

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no ingest job {job_id[:40]!r}")
        return job

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class IngestRequest(BaseModel):
    """Ingest a catalog, folder or image by its path on the server."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=4096, description="Path on the server.")
    prune: bool = Field(default=False, description="Drop rows of this source that are gone.")


def _uploaded_items(name: str, data: bytes) -> list[Any]:
    """Items of an uploaded catalog; the file lives in a temp folder only while it is read."""
    from ingestion.service import list_items

    suffix = Path(name).suffix.lower()
    if suffix not in _CATALOG_SUFFIXES:
        raise ConfigError(f"upload {name!r}: a catalog must be .jsonl, .ndjson or .csv")
    folder = Path(tempfile.mkdtemp(prefix="mmsearch-upload-"))
    try:
        path = folder / f"catalog{suffix}"
        path.write_bytes(data)
        items = list_items([str(path)])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [replace(item, source=f"upload:{name}") for item in items]


async def _request_items(request: Request, cap: int) -> tuple[list[Any], str, bool]:
    """(items, source, prune) from a JSON ``{"path"}`` body or a multipart ``catalog`` file."""
    from ingestion.service import list_items

    state = get_state(request)
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind == "application/json":
        req = IngestRequest.model_validate_json(await request.body())
        return await state.run_io(lambda: list_items([req.path])), req.path, req.prune
    if kind != "multipart/form-data":
        raise ConfigError(
            'send application/json {"path": ...} or multipart/form-data with a catalog file'
        )
    async with request.form(max_files=1, max_fields=5) as form:
        upload = form.get("catalog")
        if upload is None or isinstance(upload, str):
            raise ConfigError("multipart ingest needs a file field 'catalog' (JSONL or CSV)")
        data = await upload.read(cap + 1)
        if len(data) > cap:
            raise PayloadTooLargeError(too_large_message(cap))
        name = " ".join((upload.filename or "catalog.jsonl").split())[:120]
        prune = str(form.get("prune", "false")).lower() in ("1", "true", "on", "yes")
    items = await state.run_io(lambda: _uploaded_items(name, data))
    return items, f"upload:{name}", prune


@router.post("", status_code=202, summary="Start an ingest job (needs the API key)")
async def start(request: Request) -> dict[str, Any]:
    state = get_state(request)
    check_key(request, state.config.key, what="ingest")
    items, source, prune = await _request_items(request, state.config.max_upload_bytes)
    job = state.jobs.submit(items, source, prune)
    logger.info("ingest job %s: %d items from %s", job.id, len(items), source)
    return job.to_dict()


@router.get("/{job_id}", summary="An ingest job's progress and report (needs the API key)")
async def status(job_id: str, request: Request) -> dict[str, Any]:
    state = get_state(request)
    check_key(request, state.config.key, what="ingest")
    return state.jobs.get(job_id).to_dict()
