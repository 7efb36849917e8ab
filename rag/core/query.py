"""The query as it travels from the engine to the retriever and the reranker.

A LlamaIndex ``QueryBundle`` carries an image only as a path. ``ImageQueryBundle`` also carries
the decoded image, so a search decodes its query image once, and in-memory images (PIL, bytes,
uploads) need no temporary file. Components accept a plain ``QueryBundle`` too (stock LlamaIndex
use) and decode its ``image_path`` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llama_index.core.schema import QueryBundle

from rag.core.images import DecodedImage, ImageInput, decode_image
from rag.errors import ConfigError, EmptyQueryError

QueryKind = Literal["text", "image", "composed"]
SearchMode = Literal["dense", "keyword", "hybrid"]
SEARCH_MODES: tuple[SearchMode, ...] = ("dense", "keyword", "hybrid")


def check_mode(mode: str | None) -> SearchMode | None:
    """``mode`` validated (None = the engine's default for the query)."""
    if mode is None or mode in SEARCH_MODES:
        return mode  # type: ignore[return-value]
    raise ConfigError(f"search mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")


@dataclass
class ImageQueryBundle(QueryBundle):
    """A ``QueryBundle`` with the query image decoded (``image_path`` is its file, if any)."""

    image: DecodedImage | None = None

    @classmethod
    def build(cls, text: str | None, image: ImageInput | None) -> ImageQueryBundle:
        """Decode ``image`` (path, bytes, PIL or an already decoded image) once."""
        decoded = decode_image(image) if image is not None else None
        return cls(
            query_str=text or "", image_path=decoded.path if decoded else None, image=decoded
        )


def query_image(bundle: QueryBundle) -> DecodedImage | None:
    """The decoded query image of ``bundle``: carried along, or read from ``image_path``."""
    image = getattr(bundle, "image", None)
    if isinstance(image, DecodedImage):
        return image
    return decode_image(bundle.image_path) if bundle.image_path else None


def has_image(bundle: QueryBundle) -> bool:
    return bool(bundle.image_path) or isinstance(getattr(bundle, "image", None), DecodedImage)


def query_kind(bundle: QueryBundle) -> QueryKind:
    """``text``, ``image`` or ``composed``; raises EmptyQueryError for neither."""
    has_text = bool(bundle.query_str and bundle.query_str.strip())
    if has_image(bundle):
        return "composed" if has_text else "image"
    if has_text:
        return "text"
    raise EmptyQueryError("empty query: give a text, an image, or both")
