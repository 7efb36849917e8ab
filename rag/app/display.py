"""Showing results to a person: the compact results table and the results grid image.

Shared by the CLI (`mmsearch search`, `demo`) and the chat loop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rag.errors import MMSearchError
from rag.store.schema import node_image_path


def short_path(path: str) -> str:
    """A path as a person wants it in a table: relative to the working directory when it is
    inside it, else the file name (the full path is in ``--json``)."""
    if "://" in path:
        return path
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return Path(path).name
    return rel if not rel.startswith("..") else Path(path).name


def save_result_grid(result: Any, out: str) -> str:
    """Save the results (and the query image) as one composite PNG; returns the path."""
    from rag.rerank.grid import build_grid

    if not result.nodes:
        raise MMSearchError("no results to draw")
    grid = build_grid(
        [node_image_path(n.node) for n in result.nodes[:25]], query=result.query_image
    )
    path = Path(out).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
    except (OSError, ValueError) as e:
        raise MMSearchError(f"cannot write grid image {out}: {e}") from e
    return str(path)


def print_results(result: Any, console: Any, *, show_skip: bool = True) -> None:
    """The compact results table plus caption / reason / rerank note."""
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("#", "id", "score", "was"):
        table.add_column(col, justify="right" if col != "id" else "left", no_wrap=True)
    table.add_column("title / image", overflow="fold")  # wrap, never cut a path short
    for row in result.results:
        label = row.get("title") or short_path(str(row.get("image_path") or ""))
        score = "" if row["score"] is None else f"{row['score']:.3f}"
        table.add_row(
            str(row["rank"]), row["id"][:12], score, str(row["retrieval_rank"] or ""), str(label)
        )
    console.print(table)
    if result.caption:
        console.print(f"[dim]caption:[/dim] {result.caption}")
    if result.reason:
        console.print(f"[dim]reason:[/dim] {result.reason}")
    status, detail = result.rerank["status"], result.rerank.get("detail", "")
    if status in ("repaired", "fallback"):
        console.print(f"[yellow]note: rerank {status}: {detail}[/yellow]")
    elif status == "skipped" and show_skip:
        console.print(f"[dim]rerank skipped: {detail}[/dim]")
