"""A grouped bar chart of an evaluation report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rag.evaluation.metrics import KS


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
