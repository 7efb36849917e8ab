"""The evaluation report as text: the metric table (columns = search mode x stage) and the
summary lines the CLI prints. Pure functions over the report dict."""

from __future__ import annotations

from typing import Any

from rag.evaluation.runner import STAGES

_NOT_METRICS = {"rerank_status", "latency_ms", "submission", "categories"}


def columns(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(column name, stage entry) per search mode and stage, in report order."""
    if "by_mode" in report:
        return [
            (f"{mode} {stage}", entry)
            for mode, stages in report["by_mode"].items()
            for stage, entry in stages.items()
        ]
    return [(stage, report[stage]) for stage in STAGES if stage in report]


def metric_keys(entry: dict[str, Any]) -> list[str]:
    """The metric keys of a stage entry (per-category ones as ``<category> <metric>`` when
    there are several categories)."""
    keys = [k for k, v in entry.items() if k not in _NOT_METRICS and isinstance(v, float)]
    categories = entry.get("categories", {})
    if len(categories) > 1:  # one category: its metrics are the means already shown
        for cat, values in categories.items():
            keys += [f"{cat} {k}" for k, v in values.items() if isinstance(v, float)]
    return keys


def _value(entry: dict[str, Any], key: str) -> float | None:
    if key in entry:
        return float(entry[key])
    cat, _, metric = key.partition(" ")
    value = entry.get("categories", {}).get(cat, {}).get(metric)
    return None if value is None else float(value)


def table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the metric table; benchmark protocols in percent, as papers print."""
    cols = columns(report)
    percent = report.get("protocol") in ("cirr", "fashioniq")
    header = ["metric (%)" if percent else "metric", *[name for name, _ in cols]]
    rows = []
    for key in metric_keys(cols[0][1]) if cols else []:
        cells = []
        for _, entry in cols:
            v = _value(entry, key)
            cells.append("-" if v is None else f"{v * 100:.2f}" if percent else f"{v:.3f}")
        rows.append([key, *cells])
    return header, rows


def summary(report: dict[str, Any]) -> list[str]:
    """The lines around the table: protocol, depth, gallery, rerank status, latency, files."""
    reranked = any(name.endswith("rerank") for name, _ in columns(report))
    head = (
        f"; top {report['top_k']} reranked (ranks below keep the retrieval order)"
        if reranked
        else ""
    )
    lines = [
        f"{report['queries']} queries, protocol {report['protocol']}, search mode(s) "
        f"{', '.join(report['search_modes'])}, {report['depth']} ranks scored{head}"
    ]
    for name, g in report["gallery"].items():
        if g.get("images") is not None:
            split = f" (split {g['split_file']}, {g['restricted_by']})" if g["split_file"] else ""
            lines.append(f"gallery of {name}: {g['images']} images{split}")
    for name, entry in columns(report):
        lines.append(
            f"{name}: rerank status {entry['rerank_status']}, latency ms {entry['latency_ms']}"
        )
        for path in entry.get("submission", []):
            lines.append(f"{name}: submission file {path}")
    return lines
