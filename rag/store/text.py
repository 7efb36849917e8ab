"""A row's search text: the catalog fields that BM25 indexes, joined into one string.

Used where rows are built (ingestion) and where they are rebuilt from stored metadata
(`mmsearch reindex`), so both produce the same text for the same metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rag.errors import ConfigError
from rag.store.schema import TEXT_MAX_BYTES


def parse_text_fields(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"title, description"`` (or a list) -> ``("title", "description")``; order kept,
    duplicates dropped. Raises ConfigError when no field is named."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    fields = tuple(dict.fromkeys(p.strip() for p in parts if p and p.strip()))
    if not fields:
        raise ConfigError(
            f"text fields {spec!r} name no field; give catalog fields like title,description"
        )
    return fields


def _flatten(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _flatten(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _flatten(v)]
    return [str(value).strip()]


def catalog_text(metadata: Mapping[str, Any], fields: Sequence[str]) -> str:
    """The values of ``fields`` in ``metadata`` (lists and nested objects flattened), one per
    line, in field order; '' when none is present. Cut to the text field's byte limit on a
    character boundary."""
    text = "\n".join(s for f in fields for s in _flatten(metadata.get(f)) if s)
    data = text.encode("utf-8")
    if len(data) <= TEXT_MAX_BYTES:
        return text
    return data[:TEXT_MAX_BYTES].decode("utf-8", errors="ignore")
