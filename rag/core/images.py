"""Reading images safely: any source (path, bytes, PIL), EXIF orientation, any mode to RGB.

Every failure becomes an ``InputImageError`` naming the input and the reason, so callers can
skip and report a bad file instead of crashing.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from rag.errors import InputImageError


@dataclass(frozen=True)
class DecodedImage:
    """An image decoded once and passed along: the query path decodes the query image once and
    the retriever, the reranker and the grid all use this object.

    Attributes:
        image: the RGB PIL image (EXIF orientation applied).
        sha256: content hash of the source bytes (of the pixels for an in-memory PIL image);
            keys the reranker's caption cache.
        label: the file path, or a short description of an in-memory image.
        path: the file it was read from, if any.
    """

    image: Image.Image
    sha256: str
    label: str
    path: str | None = None


ImageInput = str | os.PathLike | bytes | bytearray | io.BytesIO | Image.Image | DecodedImage

# Refuse decompression bombs well before PIL's own limit would allocate gigabytes.
MAX_PIXELS = 80_000_000
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def describe(src: ImageInput) -> str:
    """A short name for an image input, used in error messages."""
    if isinstance(src, DecodedImage):
        return src.label
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, Image.Image):
        return f"<PIL image {src.size[0]}x{src.size[1]}>"
    if isinstance(src, io.BytesIO):
        return f"<{len(src.getbuffer())} bytes>"
    return f"<{len(src)} bytes>"


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a file, turning OS errors into InputImageError."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise InputImageError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise InputImageError(f"{path}: is a directory, not an image") from e
    except PermissionError as e:
        raise InputImageError(f"{path}: permission denied") from e
    except OSError as e:
        raise InputImageError(f"{path}: cannot read ({e.strerror or e})") from e
    if not data:
        raise InputImageError(f"{path}: empty file (0 bytes)")
    return data


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _HIGH_BIT_MODES:
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(scaled.astype(np.uint8), mode="L")
    elif img.mode == "P":
        img = img.convert("RGBA")  # palette transparency is only honoured via RGBA
    return img.convert("RGB") if img.mode != "RGB" else img


def _open(data: bytes, label: str) -> Image.Image:
    """Open encoded image bytes (lazily decoded by PIL); format and size errors named."""
    if not data:
        raise InputImageError(f"{label}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise InputImageError(f"{label}: not an image (unrecognised format)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputImageError(
            f"{label}: image dimensions too large (over {Image.MAX_IMAGE_PIXELS:,} pixels; "
            "a decompression bomb?)"
        ) from e
    except Exception as e:  # PIL raises assorted errors on malformed headers
        raise _decode_error(label, e) from e


def load_image(src: ImageInput, *, name: str | None = None) -> Image.Image:
    """Decode ``src`` into an RGB PIL image with EXIF orientation applied.

    Raises:
        InputImageError: unreadable, empty, truncated, not an image, or too large.
    """
    if isinstance(src, DecodedImage):
        return src.image
    label = name or describe(src)
    if isinstance(src, Image.Image):
        img = src
    else:
        if isinstance(src, (str, os.PathLike)):
            data = read_bytes(src)
        elif isinstance(src, io.BytesIO):
            data = src.getvalue()
        else:
            data = bytes(src)
        img = _open(data, label)
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise InputImageError(
            f"{label}: image dimensions too large ({w}x{h} > {MAX_PIXELS:,} pixels)"
        )
    if w == 0 or h == 0:
        raise InputImageError(f"{label}: image has zero size")
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)  # first frame of GIF/WebP/APNG animations
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return _to_rgb(img)
    except Exception as e:  # OSError, SyntaxError, ValueError... depending on the codec
        raise _decode_error(label, e) from e


def _decode_error(label: str, e: Exception) -> InputImageError:
    if "truncated" in str(e).lower():
        return InputImageError(f"{label}: image is truncated or corrupt")
    return InputImageError(f"{label}: cannot decode image ({e})")


def decode_image(src: ImageInput) -> DecodedImage:
    """Read and decode ``src`` once, keeping its content hash and a label for messages."""
    if isinstance(src, DecodedImage):
        return src
    if isinstance(src, (str, os.PathLike)):
        data = read_bytes(src)
        return DecodedImage(
            load_image(data, name=str(src)), content_sha256(data), str(src), str(src)
        )
    if isinstance(src, Image.Image):
        img = load_image(src)
        return DecodedImage(img, content_sha256(img.tobytes()), describe(src))
    data = src.getvalue() if isinstance(src, io.BytesIO) else bytes(src)
    return DecodedImage(load_image(data), content_sha256(data), describe(src))
