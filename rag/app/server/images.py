"""GET /api/images/{id} and /api/images/{id}/thumb: a row's image, looked up by row id.

Only files that rows of the collection point at are served: the id is a database key, never
part of a path. Thumbnails are made once and cached on disk by row id (a row id changes when
its image content does, so a cached thumbnail never goes stale).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from rag.app.server.state import ServerState, get_state
from rag.core.images import load_image
from rag.errors import InputImageError, NotFoundError
from rag.store.schema import node_image_path

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/images", tags=["images"])
_CACHE = {"Cache-Control": "private, max-age=86400"}


def row_file(state: ServerState, row_id: str) -> Path:
    """The local image file of row ``row_id`` (blocking).

    Raises:
        NotFoundError: no such row, or its image is not (or no longer) on this server.
    """
    path = node_image_path(state.row(row_id))
    if not path or str(path).startswith(("http://", "https://")):
        raise NotFoundError(f"the image of row {row_id!r} is not stored on this server")
    file = Path(path)
    if not file.is_file():
        raise NotFoundError(f"the image file of row {row_id!r} is gone; ingest it again")
    return file


def media_type(file: Path) -> str:
    """The image's MIME type by content (files need not have an extension)."""
    from PIL import Image

    try:
        with Image.open(file) as img:
            return Image.MIME.get(img.format or "", "application/octet-stream")
    except Exception:  # unreadable now: serve the bytes, the browser decides
        return "application/octet-stream"


class Thumbnails:
    """JPEG thumbnails (longest side ``px``) cached as files under ``cache_dir``."""

    def __init__(self, cache_dir: Path, px: int = 256) -> None:
        self.cache_dir = cache_dir
        self.px = px

    def get(self, row_id: str, source: Path) -> Path:
        """The cached thumbnail of ``source`` for ``row_id``; made on first use (blocking)."""
        target = self.cache_dir / f"{row_id}-{self.px}.jpg"
        if target.is_file():
            return target
        try:
            img = load_image(source)
        except InputImageError as e:
            raise NotFoundError(f"the image of row {row_id!r} cannot be read: {e}") from e
        img.thumbnail((self.px, self.px))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".part-", suffix=".jpg")
        try:
            with os.fdopen(fd, "wb") as fh:
                img.save(fh, format="JPEG", quality=85)
            os.replace(tmp, target)  # concurrent requests for one id: the last rename wins
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target


@router.get("/{row_id}", summary="A row's original image", response_class=FileResponse)
async def original(row_id: str, request: Request) -> FileResponse:
    state = get_state(request)

    def find() -> tuple[Path, str]:
        file = row_file(state, row_id)
        return file, media_type(file)

    file, kind = await state.run_io(find)
    return FileResponse(file, media_type=kind, headers=_CACHE)


@router.get("/{row_id}/thumb", summary="A row's thumbnail (JPEG)", response_class=FileResponse)
async def thumbnail(row_id: str, request: Request) -> FileResponse:
    state = get_state(request)
    thumb = await state.run_io(lambda: state.thumbnails.get(row_id, row_file(state, row_id)))
    return FileResponse(thumb, media_type="image/jpeg", headers=_CACHE)
