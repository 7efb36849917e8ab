"""Request-level protections: the body-size cap, the API key, and response security headers.

Starlette has no limit on a request body or a multipart file part, so :class:`BodySizeLimit`
refuses a declared ``Content-Length`` over the cap at once and counts the bytes of bodies
that do not declare one (chunked uploads, lying clients) as they are read.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import Request

from rag.app.server.errors import error_response
from rag.errors import AuthError, PayloadTooLargeError

Scope = dict[str, Any]


def too_large_message(max_bytes: int) -> str:
    return (
        f"request body too large: the cap is {max_bytes / (1024 * 1024):g} MB "
        "(MMSEARCH_MAX_UPLOAD_MB on the server)"
    )


class BodySizeLimit:
    """Pure ASGI middleware: HTTP 413 for request bodies over ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = False  # the server rejects a malformed header itself
            if too_big:
                response = error_response(413, too_large_message(self.max_bytes))
                await response(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the endpoint's body read: the 413 handler answers.
                    raise PayloadTooLargeError(too_large_message(self.max_bytes))
            return message

        await self.app(scope, limited_receive, send)


class SecurityHeaders:
    """Pure ASGI middleware: headers every response carries."""

    HEADERS = (
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
    )

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def presented_key(request: Request) -> str | None:
    """The key a request carries: ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``."""
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def check_key(request: Request, expected: str | None, *, what: str) -> None:
    """Raise ``AuthError`` unless the request carries ``expected``.

    Args:
        expected: the configured key; ``None`` means ``what`` is off on this server.
        what: the protected thing, for the message.
    """
    if expected is None:
        raise AuthError(f"{what} needs an API key, and this server has none: set MMSEARCH_API_KEY")
    given = presented_key(request)
    if given is None:
        raise AuthError(f"{what} needs the API key: send it as X-API-Key or Authorization: Bearer")
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise AuthError("wrong API key")
