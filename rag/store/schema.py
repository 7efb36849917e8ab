"""What one row of the image collection holds: field names, scalar fields, and how a node
points at its image file. Shared by the store, ingestion, the reranker and the display."""

from __future__ import annotations

from typing import Any

PROP_MODEL = "mmsearch.model"
PROP_DIM = "mmsearch.dim"
ID_FIELD = "id"
DOC_ID_FIELD = "doc_id"
TEXT_FIELD = "text"
EMBEDDING_FIELD = "embedding"
ID_MAX_LEN = 64
# Real scalar fields (filterable fast); everything else in a node's metadata goes to the
# dynamic JSON field. (name, kind, max_length)
SCALAR_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("item_key", "VARCHAR", 4096),
    ("image_path", "VARCHAR", 4096),
    ("content_sha256", "VARCHAR", 64),
    ("source", "VARCHAR", 4096),
    ("title", "VARCHAR", 4096),
    ("category", "VARCHAR", 512),
    ("price", "DOUBLE", 0),
)


def node_image_path(node: Any) -> str | None:
    """A readable file for a result node: the local copy of a URL image, else its path."""
    meta = node.metadata
    return meta.get("local_path") or meta.get("image_path") or getattr(node, "image_path", None)
