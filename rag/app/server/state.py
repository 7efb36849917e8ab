"""What the routes share: the engine, the configuration, the thread pools, the thumbnails and
the ingest jobs; plus the one way blocking work leaves the event loop."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request

from rag.errors import NotFoundError

if TYPE_CHECKING:
    from rag.app.server.config import ServerConfig
    from rag.app.server.images import Thumbnails
    from rag.app.server.ingest import IngestJobs
    from rag.engine.query_engine import MMSearchQueryEngine

T = TypeVar("T")
# Row ids are looked up in the collection, never used as paths; this only keeps junk out.
_ROW_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class ServerState:
    """Everything a request handler needs (``request.app.state.mm``)."""

    engine: MMSearchQueryEngine
    config: ServerConfig
    thumbnails: Thumbnails
    jobs: IngestJobs
    pool: ThreadPoolExecutor = field(init=False)
    io_pool: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.pool = ThreadPoolExecutor(
            max_workers=self.config.search_threads, thread_name_prefix="mmsearch-search"
        )
        # Searches wait on the model; images, thumbnails and stats must not queue behind them.
        self.io_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mmsearch-io")

    async def run(self, fn: Callable[[], T]) -> T:
        """Run a blocking search (model calls, Milvus, decoding, downloads) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)

    async def run_io(self, fn: Callable[[], T]) -> T:
        """Run short blocking work (a row lookup, a file, a thumbnail) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, fn)

    def row(self, row_id: str) -> Any:
        """The collection's node with id ``row_id`` (blocking).

        Raises:
            NotFoundError: no such row (or an id that cannot be one).
        """
        if not _ROW_ID.match(row_id):
            raise NotFoundError(f"no image with id {row_id[:80]!r}")
        store = self.engine.store
        nodes = store.vector_store.get_nodes(node_ids=[row_id]) if store is not None else []
        if not nodes:
            raise NotFoundError(f"no image with id {row_id!r} in the collection")
        return nodes[0]

    def close(self) -> None:
        self.jobs.close()
        for pool in (self.pool, self.io_pool):
            pool.shutdown(wait=False, cancel_futures=True)


def get_state(request: Request) -> ServerState:
    return request.app.state.mm  # type: ignore[no-any-return]
