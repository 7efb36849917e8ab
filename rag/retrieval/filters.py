"""Parse user filter expressions (``category=Electronics``, ``price<20``) into LlamaIndex
``MetadataFilters``; Milvus evaluates them (scalar fields fast, others via the JSON field)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from llama_index.core.vector_stores import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from rag.errors import ConfigError

_OPS = {
    "==": FilterOperator.EQ,
    "=": FilterOperator.EQ,
    "!=": FilterOperator.NE,
    "<=": FilterOperator.LTE,
    ">=": FilterOperator.GTE,
    "<": FilterOperator.LT,
    ">": FilterOperator.GT,
}
_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|=|<|>)\s*(.+?)\s*$")
NUMERIC_FIELDS = {"price"}


def parse_filter(expr: str) -> MetadataFilter:
    """One ``key OP value`` expression; OP is one of = == != < <= > >=."""
    m = _EXPR.match(expr)
    if not m:
        raise ConfigError(
            f"filter {expr!r} is not of the form key=value, key<value, key>=value, key!=value"
        )
    key, op, raw = m.groups()
    raw = raw.strip().strip("'\"")
    value: str | float = raw
    if key in NUMERIC_FIELDS or op in ("<", "<=", ">", ">="):
        try:
            value = float(raw)
        except ValueError as e:
            raise ConfigError(f"filter {expr!r}: {raw!r} is not a number") from e
    return MetadataFilter(key=key, value=value, operator=_OPS[op])


def parse_filters(exprs: Iterable[str] | None) -> MetadataFilters | None:
    """All expressions combined with AND; ``None`` when there are none."""
    filters = [parse_filter(e) for e in (exprs or []) if e.strip()]
    if not filters:
        return None
    return MetadataFilters(filters=list(filters), condition=FilterCondition.AND)
