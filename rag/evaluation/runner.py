"""Run a query set through the engine in each mode (``retrieval``, ``rerank``) and report.

Metrics (JSON keys): ``recall@1``, ``recall@5``, ``recall@10``, ``mrr@10``, ``ndcg@10``, for
retrieval alone and after the rerank, plus rerank status counts and per-stage latency.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rag.evaluation.metrics import metrics_for
from rag.evaluation.queries import EvalQuery, result_names


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
