"""Ranking metrics (pure functions): recall@k, MRR@k, nDCG@k and their means over queries."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

KS = (1, 5, 10)


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
