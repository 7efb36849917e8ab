"""The evaluation protocols (``cirr``, ``fashioniq``, ``plain``): what each does with the query
image, how deep it ranks, and how a query set's rankings become its metrics.

- ``cirr``: the reference image is removed from its own ranking (CLIP4Cir src/validate.py
  L162-166; CIRPLANT pushes it to the bottom, OSCAR_CIRPLANT.py L295-296: the same top 50);
  ground truth is ``target_hard`` (CLIP4Cir src/data_utils.py L251-252).
- ``fashioniq``: the reference (``candidate``) stays in the gallery (starter kit utils.py
  L82-95; CLIP4Cir src/validate.py L41-55); metrics per category and their mean.
- ``plain``: our query files; a benchmark file read this way keeps the old report (reference
  excluded, recall@1/5/10, MRR@10, nDCG@10).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rag.errors import ConfigError
from rag.evaluation import metrics
from rag.evaluation.queries import EvalQuery, QuerySet

SUBMISSION_DEPTH = 50  # CIRR recall file and FashionIQ 'ranking': top 50
SUBSET_DEPTH = 3  # CIRR recall_subset file: top 3


@dataclass(frozen=True)
class Protocol:
    """How one benchmark evaluates.

    Args:
        name: ``cirr``, ``fashioniq`` or ``plain``.
        exclude_reference: drop the query image from its own ranking.
        depth: ranks the metrics (and submissions) read.
    """

    name: str
    exclude_reference: bool
    depth: int


PROTOCOLS = {
    "cirr": Protocol("cirr", True, 50),
    "fashioniq": Protocol("fashioniq", False, 50),
    "plain": Protocol("plain", True, 10),
}


@dataclass
class Ranked:
    """One query's ranking: data set names best first (query image removed when the protocol
    says so), every name of each result (for our id matching), and the CIRR subset order."""

    names: list[str]
    aliases: list[set[str]] = field(default_factory=list)
    subset: list[str] = field(default_factory=list)


def choose(requested: str | None, sets: Sequence[QuerySet]) -> Protocol:
    """The protocol for ``sets``: ``requested`` if compatible, else by the files' format."""
    kinds = {s.format for s in sets}
    if len(kinds) > 1:
        files = ", ".join(f"{s.path.name} ({s.format})" for s in sets)
        raise ConfigError(f"query files mix formats ({files}); evaluate them in separate runs")
    kind = kinds.pop()
    if requested is None or requested == kind:
        return PROTOCOLS[kind]
    if requested not in PROTOCOLS:
        raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {requested!r}")
    if requested == "plain":
        return PROTOCOLS["plain"]
    raise ConfigError(
        f"--protocol {requested}: {sets[0].path} is a {kind} file (use --protocol {kind} or plain)"
    )


def _target(q: EvalQuery) -> str:
    return next(iter(q.relevant))


def _plain(results: Sequence[tuple[QuerySet, list[Ranked]]]) -> dict[str, Any]:
    flags = [
        ([bool(names & q.relevant) for names in r.aliases], len(q.relevant))
        for qs, ranked in results
        for q, r in zip(qs.queries, ranked, strict=True)
    ]
    return metrics.metrics_for(flags)


def _cirr(results: Sequence[tuple[QuerySet, list[Ranked]]]) -> dict[str, Any]:
    return metrics.cirr_metrics(
        (r.names, _target(q), r.subset)
        for qs, ranked in results
        for q, r in zip(qs.queries, ranked, strict=True)
    )


def _fashioniq(results: Sequence[tuple[QuerySet, list[Ranked]]]) -> dict[str, Any]:
    rows: dict[str, list[tuple[list[str], str]]] = {}
    for qs, ranked in results:
        rows.setdefault(qs.group, []).extend(
            (r.names, _target(q)) for q, r in zip(qs.queries, ranked, strict=True)
        )
    per = {cat: metrics.fiq_metrics(r) for cat, r in rows.items()}
    out: dict[str, Any] = metrics.fiq_mean(per)
    out["categories"] = {cat: {"queries": len(rows[cat]), **m} for cat, m in per.items()}
    return out


def score(protocol: Protocol, results: Sequence[tuple[QuerySet, list[Ranked]]]) -> dict[str, Any]:
    """The protocol's metrics over the query sets that carry ground truth ({} if none)."""
    results = [(qs, r) for qs, r in results if qs.has_ground_truth]
    if not results:
        return {}
    scorer = {"plain": _plain, "cirr": _cirr, "fashioniq": _fashioniq}[protocol.name]
    return scorer(results)
