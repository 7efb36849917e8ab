"""Run the server: check the bind address, load the models and open the collection once,
then hand the app to uvicorn (one process: it holds the models and the Milvus Lite file)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rag.app.server.config import ServerConfig
from rag.errors import MMSearchError

if TYPE_CHECKING:
    from rag.core.settings import Settings
    from rag.engine.query_engine import MMSearchQueryEngine

logger = logging.getLogger(__name__)


def build_server_engine(settings: Settings) -> MMSearchQueryEngine:
    """The configured engine on a collection that is created when missing, so a new server
    can be filled through POST /api/ingest."""
    from rag.factory import build_embedding, build_query_engine, open_store

    embedding = build_embedding(settings)
    store = open_store(settings, embedding, create=True)
    try:
        return build_query_engine(settings, embedding=embedding, store=store)
    except BaseException:
        store.close()
        raise


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM), then close the collection.

    Raises:
        ConfigError: a non-loopback ``host`` without ``MMSEARCH_API_KEY`` (checked before
            any model loads).
    """
    import uvicorn

    from rag.app.server.app import create_app

    config = ServerConfig.from_settings(settings, host=host)
    engine = build_server_engine(settings)
    try:
        app = create_app(engine, config, settings=settings)
        uvicorn.run(app, host=host, port=port, log_level="info", workers=1)
    finally:
        engine.close()


@contextmanager
def background_server(app: Any, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` from a thread of this process while the block runs; yields its base URL
    (``port=0``: a free port). For tests, benchmarks and notebooks; it leaves the engine open.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="mmsearch-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive():
            raise MMSearchError(f"the server could not start on {host}:{port} (see the log)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise MMSearchError(f"the server did not start on {host}:{port} within 30 s")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    try:
        yield f"http://{shown}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
