"""Every error the server answers is JSON ``{"error": "<one line>"}`` with a fitting status:
the product's own errors by class, request validation, unknown routes, and a generic 500
for anything unexpected (the traceback goes to the server log, never to the client)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag.errors import (
    AuthError,
    ConfigError,
    DownloadError,
    EmptyCollectionError,
    EmptyQueryError,
    InputImageError,
    MMSearchError,
    ModelLoadError,
    NotFoundError,
    PayloadTooLargeError,
    SourceError,
    StoreError,
    URLNotAllowedError,
    VLMError,
)

logger = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides its status.
STATUS: tuple[tuple[type[MMSearchError], int], ...] = (
    (AuthError, 401),
    (NotFoundError, 404),
    (PayloadTooLargeError, 413),
    (URLNotAllowedError, 400),
    (InputImageError, 400),
    (EmptyQueryError, 400),
    (SourceError, 400),
    (ConfigError, 400),
    (EmptyCollectionError, 409),
    (StoreError, 503),
    (ModelLoadError, 503),
    (VLMError, 502),
    (DownloadError, 502),
)
INTERNAL = "internal server error; the server log has the details"


def one_line(text: str, limit: int = 500) -> str:
    """``text`` collapsed to one line of at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def status_for(err: MMSearchError) -> int:
    for cls, status in STATUS:
        if isinstance(err, cls):
            return status
    return 400


def validation_message(errors: list[Any]) -> str:
    """The first validation problem as ``field: message`` (+ how many more)."""
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
    text = f"{loc}: {first.get('msg', 'invalid')}" if loc else str(first.get("msg", "invalid"))
    more = len(errors) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


async def _mmsearch_error(request: Request, exc: Exception) -> Any:
    assert isinstance(exc, MMSearchError)
    status = status_for(exc)
    if status >= 500:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
    return error_response(status, str(exc), headers)


async def _validation_error(request: Request, exc: Exception) -> Any:
    assert isinstance(exc, (RequestValidationError, ValidationError))
    return error_response(422, validation_message(list(exc.errors())))


async def _http_error(request: Request, exc: Exception) -> Any:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"not found: {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> Any:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, INTERNAL)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(MMSearchError, _mmsearch_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
