"""A per-query scratchpad where node postprocessors record what they did.

Postprocessors only return nodes; the query engine opens a fresh report around each query and
lifts what was recorded (caption, reason, rerank status, timings) into ``Response.metadata``.
A ``ContextVar`` keeps concurrent queries (threads, asyncio tasks) apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_REPORT: ContextVar[dict[str, Any] | None] = ContextVar("mmsearch_report", default=None)


@contextmanager
def query_report() -> Iterator[dict[str, Any]]:
    """Open a report for one query; yields the dict that postprocessors write into."""
    report: dict[str, Any] = {}
    token = _REPORT.set(report)
    try:
        yield report
    finally:
        _REPORT.reset(token)


def record(**values: Any) -> None:
    """Record values for the current query (a no-op outside the query engine)."""
    report = _REPORT.get()
    if report is not None:
        report.update(values)
