"""Catalog sources: turn a folder or a catalog file (JSONL/CSV) into `CatalogItem`s.

An item has a stable key (the file path, or the catalog's product id), the image location (a
local path or an http(s) URL) and metadata. Sources only list items; reading, downloading and
decoding happen in the pipeline, where failures are reported per item.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import SourceError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".gif",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".jfif",
    ".ppm",
    ".pgm",
}
# Magic numbers of the formats PIL decodes out of the box: a file counts as an image by its
# content even without an image extension.
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
)
CATALOG_SUFFIXES = {".jsonl", ".ndjson", ".csv"}


@dataclass(frozen=True)
class CatalogItem:
    """One product image to index."""

    key: str
    image: str  # local path or http(s) URL
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_url(self) -> bool:
        return self.image.startswith(("http://", "https://"))


def looks_like_image(path: Path) -> bool:
    """By extension, or by content (magic bytes) for files without an image extension."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(m) for m in _MAGIC)


def folder_items(root: Path) -> Iterator[CatalogItem]:
    """Every image under ``root`` (recursive, sorted; symlinked folders are not followed,
    so a symlink loop cannot trap the walk)."""
    root = root.resolve()
    source = str(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith("."):
                continue
            if path.is_symlink() and not path.exists():
                yield CatalogItem(key=str(path), image=str(path), source=source)  # reported
                continue
            if looks_like_image(path) or path.suffix.lower() in IMAGE_EXTENSIONS:
                yield CatalogItem(key=str(path), image=str(path), source=source)


def _catalog_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as fh:
            for i, row in enumerate(csv.DictReader(fh), start=2):
                yield i, {k.strip(): v for k, v in row.items() if k}
        return
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceError(f"{path}:{i}: invalid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise SourceError(f"{path}:{i}: expected a JSON object per line")
            yield i, row


def catalog_items(path: Path) -> Iterator[CatalogItem]:
    """Products from a JSONL or CSV catalog: an ``image`` (path or URL) per row, optional
    ``id``, ``title``, ``category``, ``price`` and any other metadata columns. Relative image
    paths are relative to the catalog file."""
    path = path.resolve()
    source = str(path)
    for line_no, row in _catalog_rows(path):
        image = str(row.get("image") or row.get("image_url") or row.get("image_path") or "")
        if not image:
            raise SourceError(f"{path}:{line_no}: row has no 'image' (path or URL)")
        if not image.startswith(("http://", "https://")):
            if "://" in image:
                raise SourceError(
                    f"{path}:{line_no}: image {image!r} uses an unsupported scheme "
                    "(only local paths and http(s) URLs)"
                )
            image = str((path.parent / image).resolve())
        meta: dict[str, Any] = {}
        for key, value in row.items():
            if key in ("image", "image_url", "image_path", "id") or value in (None, ""):
                continue
            meta[key] = value
        if "price" in meta:
            try:
                meta["price"] = float(str(meta["price"]).replace("$", "").replace(",", ""))
            except ValueError:
                logger.warning(
                    "%s:%d: price %r is not a number; ignored", path, line_no, meta["price"]
                )
                meta.pop("price")
        for key in ("title", "category"):
            if key in meta:
                meta[key] = str(meta[key])
        key = str(row.get("id") or image)
        yield CatalogItem(key=key, image=image, source=source, metadata=meta)


def items_for(path_or_catalog: str | Path) -> Iterator[CatalogItem]:
    """Dispatch on what the user passed: a folder, a catalog file, or a single image."""
    path = Path(path_or_catalog).expanduser()
    if not path.exists():
        raise SourceError(f"{path_or_catalog}: no such file or folder")
    if path.is_dir():
        return folder_items(path)
    if path.suffix.lower() in CATALOG_SUFFIXES:
        return catalog_items(path)
    if looks_like_image(path):
        resolved = path.resolve()
        return iter([CatalogItem(key=str(resolved), image=str(resolved), source=str(resolved))])
    raise SourceError(
        f"{path_or_catalog}: not a folder, an image, or a catalog (.jsonl/.ndjson/.csv)"
    )
