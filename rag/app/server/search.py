"""POST /api/search: a text, an image (upload, ``image_url`` or a row's ``image_id``) or both
-> the JSON of ``mmsearch search --json``, with server image URLs instead of local paths.

The request is JSON or a form (multipart for an upload). The query image is read and
validated like ingestion's (bombs, truncation, not an image: ``rag.core.images``) and a URL is
fetched through the SSRF guard of ``rag.core.fetch``; all of it runs off the event loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from rag.app.server.security import too_large_message
from rag.app.server.state import ServerState, get_state
from rag.core.fetch import fetch_bytes
from rag.core.images import DecodedImage, content_sha256, load_image, read_bytes
from rag.errors import ConfigError, InputImageError, PayloadTooLargeError

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["search"])


class SearchRequest(BaseModel):
    """The search parameters (JSON body, or the same names as form fields)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, max_length=4000, description="Query text.")
    image_url: str | None = Field(
        default=None, max_length=4000, description="Query image as a public http(s) URL."
    )
    image_id: str | None = Field(
        default=None, max_length=64, description="A result's id: its image becomes the query."
    )
    top_k: int | None = Field(default=None, ge=1, description="Results (default: the server's).")
    filters: list[str] = Field(
        default_factory=list, description='Expressions like "category=shoes", "price<50".'
    )
    rerank: bool | None = Field(default=None, description="Rerank with the VLM (default: on).")
    mode: Literal["dense", "keyword", "hybrid"] | None = Field(
        default=None, description="Retrieval mode (default: dense)."
    )


_FORM_FIELDS = set(SearchRequest.model_fields) | {"image"}
_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SearchRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        **{
                            k: {"type": "string"}
                            for k in SearchRequest.model_fields
                            if k != "filters"
                        },
                        "filters": {"type": "array", "items": {"type": "string"}},
                        "image": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
    }
}


@dataclass(frozen=True)
class Upload:
    """An uploaded query image, read into memory."""

    name: str
    data: bytes


async def _read_form(request: Request, cap: int) -> tuple[SearchRequest, Upload | None]:
    async with request.form(max_files=1, max_fields=len(_FORM_FIELDS) + 20) as form:
        unknown = sorted(set(form.keys()) - _FORM_FIELDS)
        if unknown:
            raise ConfigError(
                f"unknown field(s) {', '.join(unknown)}; known: {sorted(_FORM_FIELDS)}"
            )
        upload = None
        image = form.get("image")
        if image is not None and not isinstance(image, str):
            data = await image.read(cap + 1)
            if len(data) > cap:
                raise PayloadTooLargeError(too_large_message(cap))
            if data or image.filename:
                upload = Upload(
                    name=" ".join((image.filename or "upload").split())[:120], data=data
                )
        elif isinstance(image, str) and image:
            raise ConfigError("image must be a file upload; send a URL as image_url")
        fields: dict[str, Any] = {
            k: v for k, v in form.items() if k not in ("image", "filters") and v != ""
        }
        fields["filters"] = [str(f) for f in form.getlist("filters") if str(f).strip()]
    return SearchRequest.model_validate(fields), upload


async def parse_request(request: Request, cap: int) -> tuple[SearchRequest, Upload | None]:
    """The search parameters from a JSON body or a form; the upload, if any."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind == "application/json":
        return SearchRequest.model_validate_json(await request.body()), None
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await _read_form(request, cap)
    raise ConfigError(
        f"unsupported content type {kind or '(none)'!r}: send application/json, or "
        "multipart/form-data to upload an image"
    )


def query_image(
    state: ServerState, req: SearchRequest, upload: Upload | None
) -> DecodedImage | None:
    """The query image decoded once, named for messages (blocking: read, fetch, decode)."""
    given = [x for x in (upload, req.image_url, req.image_id) if x]
    if len(given) > 1:
        raise ConfigError("give one query image: an upload, image_url or image_id")
    if upload is not None:
        label, data = f"upload {upload.name!r}", upload.data
        if not data:
            raise InputImageError(f"{label}: empty file (0 bytes)")
    elif req.image_url:
        cfg = state.config
        label = req.image_url
        data = fetch_bytes(
            req.image_url,
            timeout_s=cfg.url_timeout_s,
            max_bytes=cfg.max_upload_bytes,
            retries=1,
            allow_private=cfg.allow_private_urls,
        )
    elif req.image_id:
        from rag.app.server.images import row_file

        label, data = f"image_id {req.image_id}", read_bytes(row_file(state, req.image_id))
    else:
        return None
    return DecodedImage(load_image(data, name=label), content_sha256(data), label)


def public_json(result: Any) -> dict[str, Any]:
    """``SearchResult.to_dict()`` with each row's local ``image_path`` replaced by the server's
    ``image_url`` and ``thumb_url`` (paths relative to the server's root)."""
    data = result.to_dict()
    rows = []
    for row in data["results"]:
        out: dict[str, Any] = {}
        for key, value in row.items():
            if key == "image_path":
                continue
            out[key] = value
            if key == "id":
                out["image_url"] = f"/api/images/{value}"
                out["thumb_url"] = f"/api/images/{value}/thumb"
        rows.append(out)
    data["results"] = rows
    return data


@router.post(
    "/search",
    summary="Search with text, an image, or both",
    openapi_extra=_OPENAPI,
    response_description="The JSON of `mmsearch search --json`; rows carry image_url/thumb_url.",
)
async def search(request: Request) -> dict[str, Any]:
    state = get_state(request)
    req, upload = await parse_request(request, state.config.max_upload_bytes)
    if req.top_k is not None and req.top_k > state.config.max_top_k:
        raise ConfigError(f"top_k must be at most {state.config.max_top_k}, got {req.top_k}")

    def run() -> Any:
        image = query_image(state, req, upload)
        return state.engine.search(
            text=req.text,
            image=image,
            top_k=req.top_k,
            filters=req.filters or None,
            rerank=req.rerank,
            mode=req.mode,
        )

    return public_json(await state.run(run))
