"""A grouped bar chart of an evaluation report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rag.errors import ConfigError
from rag.evaluation.report import columns, metric_keys


def plot(report: dict[str, Any], out: Path) -> Path:
    """A grouped bar chart of the metrics per search mode and stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = columns(report)
    keys = [k for k in (metric_keys(cols[0][1]) if cols else []) if " " not in k]
    if not keys:
        raise ConfigError("--plot: the report has no metrics (test splits have no targets)")
    fig, ax = plt.subplots(figsize=(max(7, len(keys) * 1.1), 3.5))
    width = 0.8 / max(len(cols), 1)
    for j, (name, entry) in enumerate(cols):
        xs = [i + j * width for i in range(len(keys))]
        ax.bar(xs, [entry.get(k, 0.0) for k in keys], width=width, label=name)
    ax.set_xticks([i + width * (len(cols) - 1) / 2 for i in range(len(keys))], keys)
    ax.set_ylim(0, 1)
    ax.set_title(f"mmsearch eval, {report['protocol']} ({report['queries']} queries)")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
