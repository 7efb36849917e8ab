"""Evaluation: read query sets (our JSONL, CIRR, FashionIQ), run them, compute ranking metrics.

Metrics (JSON keys): ``recall@1``, ``recall@5``, ``recall@10``, ``mrr@10``, ``ndcg@10``, for
retrieval alone and after the rerank, plus rerank status counts and per-stage latency. A result
counts as relevant when its row id, catalog key, or image file name / stem is in the query's
``relevant`` list, so annotations can name images the way the data set does.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import MMSearchError

KS = (1, 5, 10)
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


class EvalInputError(MMSearchError):
    """A query file cannot be read."""


@dataclass
class EvalQuery:
    """One evaluation query."""

    text: str | None
    image: str | None
    relevant: set[str]
    exclude: set[str] = field(default_factory=set)  # e.g. CIRR's reference image itself


# -- metrics (pure) ------------------------------------------------------------------------
def recall_at(ranked: Sequence[bool], k: int, n_relevant: int) -> float:
    """Fraction of the relevant items found in the top k (1.0/0.0 for one target)."""
    return sum(ranked[:k]) / n_relevant if n_relevant else 0.0


def mrr_at(ranked: Sequence[bool], k: int) -> float:
    for i, rel in enumerate(ranked[:k], start=1):
        if rel:
            return 1.0 / i
    return 0.0


def ndcg_at(ranked: Sequence[bool], k: int, n_relevant: int) -> float:
    dcg = sum(1.0 / math.log2(i + 1) for i, rel in enumerate(ranked[:k], start=1) if rel)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(n_relevant, k) + 1))
    return dcg / ideal if ideal else 0.0


def metrics_for(rankings: Iterable[tuple[Sequence[bool], int]]) -> dict[str, float]:
    """Mean metrics over (relevance flags in rank order, number of relevant items) pairs."""
    rows = list(rankings)
    if not rows:
        return {f"recall@{k}": 0.0 for k in KS} | {"mrr@10": 0.0, "ndcg@10": 0.0}
    out = {f"recall@{k}": statistics.fmean(recall_at(r, k, n) for r, n in rows) for k in KS}
    out["mrr@10"] = statistics.fmean(mrr_at(r, 10) for r, _ in rows)
    out["ndcg@10"] = statistics.fmean(ndcg_at(r, 10, n) for r, n in rows)
    return out


def result_names(row: dict[str, Any]) -> set[str]:
    names = {str(row.get("id")), str(row.get("item_key"))}
    path = row.get("image_path")
    if path:
        p = Path(str(path))
        names |= {p.name, p.stem}
    return {n for n in names if n and n != "None"}


# -- readers -------------------------------------------------------------------------------
def _find_image(images: Path | None, name: str) -> str:
    if images is None:
        raise EvalInputError(f"image {name!r} is referenced by name: pass --images DIR")
    direct = images / name
    if direct.is_file():
        return str(direct)
    for ext in _IMAGE_EXT:
        cand = images / f"{name}{ext}"
        if cand.is_file():
            return str(cand)
    matches = [p for p in images.rglob(f"{Path(name).stem}.*") if p.suffix.lower() in _IMAGE_EXT]
    if not matches:
        raise EvalInputError(f"image {name!r} not found under {images}")
    return str(matches[0])


def read_queries(path: Path, images: Path | None = None) -> list[EvalQuery]:
    """Our JSONL, a CIRR captions JSON (``reference``/``target_hard``/``caption``) or a
    FashionIQ captions JSON (``candidate``/``target``/``captions``), detected by content."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EvalInputError(f"{path}: cannot read ({e.strerror or e})") from e
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise EvalInputError(f"{path}: invalid JSON ({e.msg})") from e
        if rows and isinstance(rows[0], dict) and "target_hard" in rows[0]:
            return [
                EvalQuery(
                    r["caption"],
                    _find_image(images, r["reference"]),
                    {r["target_hard"]},
                    {r["reference"]},
                )
                for r in rows
            ]
        if rows and isinstance(rows[0], dict) and "captions" in rows[0]:
            return [
                EvalQuery(
                    " and ".join(c.strip() for c in r["captions"] if c.strip()),
                    _find_image(images, r["candidate"]),
                    {r["target"]},
                    {r["candidate"]},
                )
                for r in rows
            ]
        raise EvalInputError(f"{path}: a JSON list, but neither CIRR nor FashionIQ format")
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalInputError(f"{path}:{i}: invalid JSON ({e.msg})") from e
        rel = r.get("relevant")
        if not isinstance(rel, list) or not rel:
            raise EvalInputError(f"{path}:{i}: 'relevant' must be a non-empty list of ids")
        image = r.get("image")
        if image and not Path(image).is_absolute():
            base = images if images is not None else path.parent
            image = str(base / image) if (base / image).exists() else _find_image(images, image)
        if not (r.get("text") or image):
            raise EvalInputError(f"{path}:{i}: needs a 'text', an 'image', or both")
        out.append(EvalQuery(r.get("text"), image, {str(x) for x in rel}))
    if not out:
        raise EvalInputError(f"{path}: no queries")
    return out


# -- running -------------------------------------------------------------------------------
def evaluate(
    engine: Any,
    queries: Sequence[EvalQuery],
    *,
    modes: Sequence[str],
    top_k: int = 10,
    progress: Any = None,
) -> dict[str, Any]:
    """Run every query in each mode (``retrieval``, ``rerank``); returns the report dict."""
    report: dict[str, Any] = {"queries": len(queries), "top_k": top_k}
    for mode in modes:
        flags: list[tuple[list[bool], int]] = []
        statuses: Counter[str] = Counter()
        stage: dict[str, list[float]] = {}
        for i, q in enumerate(queries):
            res = engine.search(
                text=q.text, image=q.image, top_k=top_k + len(q.exclude), rerank=(mode == "rerank")
            )
            rows = [r for r in res.results if not (result_names(r) & q.exclude)][:top_k]
            flags.append(([bool(result_names(r) & q.relevant) for r in rows], len(q.relevant)))
            statuses[res.rerank["status"]] += 1
            for key, value in res.timings.items():
                stage.setdefault(key, []).append(value)
            if progress:
                progress(mode, i + 1, len(queries))
        report[mode] = {
            **metrics_for(flags),
            "rerank_status": dict(statuses),
            "latency_ms": {k: round(statistics.fmean(v) * 1000, 2) for k, v in stage.items()},
        }
    return report


def plot(report: dict[str, Any], out: Path) -> Path:
    """A grouped bar chart of the metrics per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [f"recall@{k}" for k in KS] + ["mrr@10", "ndcg@10"]
    modes = [m for m in ("retrieval", "rerank") if m in report]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(len(modes), 1)
    for j, mode in enumerate(modes):
        xs = [i + j * width for i in range(len(keys))]
        ax.bar(xs, [report[mode][k] for k in keys], width=width, label=mode)
    ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(keys))], keys)
    ax.set_ylim(0, 1)
    ax.set_title(f"mmsearch eval ({report['queries']} queries)")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
