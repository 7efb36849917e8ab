"""The FastAPI application: ``create_app(engine, config)`` wires routes, middleware, error
handlers, the page and its static files around a ready query engine (tests inject one built
on tiny models; ``mmsearch serve`` builds it from settings)."""

from __future__ import annotations

import html
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from rag.app.server import errors, images, ingest, search
from rag.app.server.config import ServerConfig
from rag.app.server.images import Thumbnails
from rag.app.server.ingest import IngestJobs, Runner
from rag.app.server.security import BodySizeLimit, SecurityHeaders, check_key
from rag.app.server.state import ServerState, get_state

if TYPE_CHECKING:
    from rag.core.settings import Settings
    from rag.engine.query_engine import MMSearchQueryEngine

logger = logging.getLogger(__name__)

_PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _package_dir(name: str) -> str:
    return str(resources.files("rag.app.server") / name)


async def api_access(request: Request) -> None:
    """All of /api needs the key when the server listens beyond loopback."""
    state = get_state(request)
    if state.config.key_for_all_api:
        check_key(request, state.config.key, what="this API")


def ingest_runner(engine: MMSearchQueryEngine, settings: Settings) -> Runner:
    """Ingest with the server's own embedding and store (the process holds the Lite file)."""
    from ingestion.service import ingest_items

    def run(items: Any, prune: bool, progress: Any) -> Any:
        return ingest_items(
            settings,
            items,
            prune=prune,
            progress=progress,
            embedding=engine.retriever.embedding,
            store=engine.store,
        )

    return run


def _health_route() -> APIRouter:
    router = APIRouter(tags=["service"])

    @router.get("/healthz", summary="Liveness (no key needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return router


def _stats_route() -> APIRouter:
    router = APIRouter(tags=["service"])

    @router.get("/api/stats", summary="The collection: rows, dim, model, index, URI")
    async def stats(request: Request) -> dict[str, Any]:
        state = get_state(request)
        store = state.engine.store
        return await state.run_io(lambda: store.info().to_dict())

    return router


def _page_route(page: Template) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> HTMLResponse:
        state = get_state(request)
        engine = state.engine
        body = page.safe_substitute(
            config=html.escape(
                json.dumps(
                    {
                        "keyRequired": state.config.key_for_all_api,
                        "topK": engine.retriever.top_k,
                        "maxTopK": state.config.max_top_k,
                        "rerank": bool(engine.rerank_default),
                    }
                )
            ),
            top_k=engine.retriever.top_k,
            max_top_k=state.config.max_top_k,
            rerank_checked="checked" if engine.rerank_default else "",
        )
        return HTMLResponse(body, headers={"Content-Security-Policy": _PAGE_CSP})

    return router


def create_app(
    engine: MMSearchQueryEngine,
    config: ServerConfig | None = None,
    *,
    settings: Settings | None = None,
) -> FastAPI:
    """The server around a ready ``engine``.

    Args:
        engine: the query engine; its store must be open (the server never closes it).
        config: the server's knobs (defaults: loopback use, no key).
        settings: what ingest jobs run with (batch size, caches, URL guard); without it,
            /api/ingest answers that ingest is not available.
    """
    config = config or ServerConfig()
    runner = ingest_runner(engine, settings) if settings is not None else None
    state = ServerState(
        engine=engine,
        config=config,
        thumbnails=Thumbnails(config.thumb_dir, config.thumb_px),
        jobs=IngestJobs(runner),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(
        lifespan=lifespan,
        title="mmsearch",
        summary="Multimodal semantic search over an image catalog (Visualized BGE + Milvus + VLM).",
        version="0.1.0",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.mm = state
    errors.install(app)
    guarded = [Depends(api_access)]
    app.include_router(search.router, dependencies=guarded)
    app.include_router(images.router, dependencies=guarded)
    app.include_router(ingest.router, dependencies=guarded)
    app.include_router(_stats_route(), dependencies=guarded)
    app.include_router(_health_route())
    page = Template(resources.files("rag.app.server").joinpath("templates/index.html").read_text())
    app.include_router(_page_route(page))
    app.mount("/static", StaticFiles(directory=_package_dir("static")), name="static")
    # Outermost last: the size cap sees the raw request first.
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization"],
        )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_upload_bytes)
    return app
