"""Milvus boolean expressions: string literals and LlamaIndex ``MetadataFilters`` -> ``expr``.

Milvus Lite 3.x has no filter templating, so values are written into the expression; strings
are JSON-quoted, which Milvus' expression grammar reads back exactly (quotes, backslashes, tabs,
newlines and non-ASCII included).
"""

from __future__ import annotations

import json
from typing import Any

from llama_index.core.vector_stores import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from rag.errors import ConfigError

_COMPARE = {
    FilterOperator.EQ: "==",
    FilterOperator.NE: "!=",
    FilterOperator.LT: "<",
    FilterOperator.LTE: "<=",
    FilterOperator.GT: ">",
    FilterOperator.GTE: ">=",
}
_FIELD_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def quote(value: str) -> str:
    """A Milvus string literal."""
    return json.dumps(value, ensure_ascii=False)


def literal(value: Any) -> str:
    """A Milvus literal for a filter value (string, number, bool, or a list of those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    raise ConfigError(f"filter value {value!r} is not a string, number, bool or list")


def _field(key: str) -> str:
    if not key or not set(key) <= _FIELD_CHARS or key[0].isdigit():
        raise ConfigError(f"filter field {key!r} is not a valid field name (letters, digits, _)")
    return key


def _one(f: MetadataFilter) -> str:
    key = _field(f.key)
    if f.operator in _COMPARE:
        return f"{key} {_COMPARE[f.operator]} {literal(f.value)}"
    if f.operator in (FilterOperator.IN, FilterOperator.NIN):
        values = f.value if isinstance(f.value, list) else [f.value]
        op = "in" if f.operator == FilterOperator.IN else "not in"
        return f"{key} {op} {literal(values)}"
    raise ConfigError(
        f"filter operator {f.operator.value!r} on {key!r} is not supported; use ==, !=, <, <=, "
        ">, >=, in or nin"
    )


def filters_to_expr(filters: MetadataFilters | None) -> str:
    """The Milvus expression for ``filters`` ('' for none)."""
    if filters is None or not filters.filters:
        return ""
    parts = [
        f"({filters_to_expr(f)})" if isinstance(f, MetadataFilters) else _one(f)
        for f in filters.filters
    ]
    if filters.condition == FilterCondition.NOT:
        return "not (" + " and ".join(parts) + ")"
    joiner = " or " if filters.condition == FilterCondition.OR else " and "
    return joiner.join(parts)
