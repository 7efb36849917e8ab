"""Ranking metrics (pure functions): recall@k, MRR@k, nDCG@k for our query sets, and the CIRR
and FashionIQ benchmark metrics exactly as their reference code computes them.

Values are fractions in [0, 1]; papers print them x100. Sources (repository @ commit, file,
lines) are named at each function; docs in README.md, "Evaluation".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

KS = (1, 5, 10)
CIRR_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
FIQ_KS = (10, 50)


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


def hit_at(ranking: Sequence[str], target: str, k: int) -> float:
    """1.0 when ``target`` is among the first ``k`` names, else 0.0: one query's share of
    CLIP4Cir's ``recall_at{K} = sum(labels[:, :K]) / len(labels)`` (ABaldrati/CLIP4Cir
    dfed9f7, src/validate.py L180-186 for CIRR, L54-55 for FashionIQ)."""
    return 1.0 if target in ranking[:k] else 0.0


def subset_ranking(ranking: Sequence[str], members: Iterable[str]) -> list[str]:
    """``ranking`` restricted to a CIRR query's ``img_set`` members (the reference already
    left out), order kept: CLIP4Cir src/validate.py L172-174 (``group_mask``), CIRPLANT
    model/OSCAR/OSCAR_CIRPLANT.py L322 (``[iii for iii in nns if iii in members]``)."""
    keep = set(members)
    return [name for name in ranking if name in keep]


def cirr_metrics(rows: Iterable[tuple[Sequence[str], str, Sequence[str]]]) -> dict[str, float]:
    """CIRR's Recall@1/5/10/50 and Recall_subset@1/2/3 over (ranking with the reference
    removed, ``target_hard``, subset ranking) per query, and ``recall_avg`` =
    (Recall@5 + Recall_subset@1) / 2 (CLIP4Cir src/combiner_train.py L389, the leaderboard's
    "Avg")."""
    rows = list(rows)
    if not rows:
        return {}
    out = {f"recall@{k}": statistics.fmean(hit_at(r, t, k) for r, t, _ in rows) for k in CIRR_KS}
    for k in CIRR_SUBSET_KS:
        out[f"recall_subset@{k}"] = statistics.fmean(hit_at(s, t, k) for _, t, s in rows)
    out["recall_avg"] = (out["recall@5"] + out["recall_subset@1"]) / 2
    return out


def fiq_metrics(rows: Iterable[tuple[Sequence[str], str]]) -> dict[str, float]:
    """FashionIQ's Recall@10 and Recall@50 of one category over (ranking of the whole split
    gallery, reference kept, ``target``) per query (CLIP4Cir src/validate.py L41-55)."""
    rows = list(rows)
    if not rows:
        return {}
    return {f"recall@{k}": statistics.fmean(hit_at(r, t, k) for r, t in rows) for k in FIQ_KS}


def fiq_mean(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The mean of each FashionIQ recall over the categories given, and ``recall_avg`` =
    (mean R@10 + mean R@50) / 2 (CLIP4Cir src/combiner_train.py L204-206)."""
    if not per_category:
        return {}
    out = {
        f"recall@{k}": statistics.fmean(m[f"recall@{k}"] for m in per_category.values())
        for k in FIQ_KS
    }
    out["recall_avg"] = (out["recall@10"] + out["recall@50"]) / 2
    return out
