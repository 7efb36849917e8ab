"""Run the query sets through the engine for each search mode (``dense``, ``keyword``,
``hybrid``) and stage (``retrieval``, ``rerank``), and assemble the report.

Retrieval depth comes from the protocol (50 ranks for CIRR and FashionIQ, plus the query image
where it is removed), not from the interactive top-k cap. The rerank reorders the head it sees
(``top_k`` candidates; the VLM's grid holds at most 25) and the ranks below keep the retrieval
order, so a metric at a cut-off >= ``top_k`` is the same before and after the rerank.

Report (JSON): ``protocol``, ``files``, ``queries``, ``top_k`` (candidates reranked), ``depth``
(ranks scored), ``search_modes``, ``gallery`` (per file), ``warnings``; then per stage the
protocol's metrics, ``rerank_status`` counts, ``latency_ms`` and ``submission`` files (test
splits). With one search mode the stages are top-level keys (``report["retrieval"]``,
``report["rerank"]``); with several they sit under ``report["by_mode"][mode]``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.core.images import decode_image
from rag.core.query import SEARCH_MODES, ImageQueryBundle
from rag.errors import ConfigError, EvalInputError, InputImageError, MMSearchError
from rag.evaluation import protocols, submission
from rag.evaluation.gallery import Gallery
from rag.evaluation.metrics import subset_ranking
from rag.evaluation.prepare import Prepared
from rag.evaluation.protocols import SUBSET_DEPTH, Ranked
from rag.evaluation.queries import EvalQuery, QuerySet, result_names

logger = logging.getLogger(__name__)

STAGES = ("retrieval", "rerank")
Progress = Callable[[str, int, int], None]


@dataclass
class _StageLog:
    """What one (search mode, stage) collected: rankings per query set, statuses, timings."""

    ranked: list[list[Ranked]]
    statuses: Counter[str] = field(default_factory=Counter)
    timings: dict[str, list[float]] = field(default_factory=dict)
    modes: Counter[str] = field(default_factory=Counter)  # the search mode each query ran in

    def add(self, set_no: int, ranked: Ranked, result: Any) -> None:
        self.ranked[set_no].append(ranked)
        self.statuses[result.rerank["status"]] += 1
        self.modes[str(result.query.get("mode") or "?")] += 1
        for key, value in result.timings.items():
            self.timings.setdefault(key, []).append(value)


def parse_modes(values: Sequence[str] | None) -> list[str | None]:
    """``--mode`` values (repeatable, or comma lists) -> search modes; [None] = the default."""
    modes = [m.strip() for v in values or () for m in v.split(",") if m.strip()]
    for m in modes:
        if m not in SEARCH_MODES:
            raise ConfigError(f"--mode must be one of {', '.join(SEARCH_MODES)}, got {m!r}")
    return list(dict.fromkeys(modes)) or [None]


def _ranked(rows: Sequence[dict[str, Any]], g: Gallery, exclude: set[str], depth: int) -> Ranked:
    """Result rows -> data set names, best first: the excluded image dropped, each image once."""
    out = Ranked([])
    for row in rows:
        name = g.name(row)
        aliases = result_names(row) | {name}
        if name in out.names or aliases & exclude:
            continue
        out.names.append(name)
        out.aliases.append(aliases)
        if len(out.names) == depth:
            break
    return out


def _member_order(ask: Callable[..., Any], q: EvalQuery, g: Gallery) -> list[str]:
    """All of a CIRR query's img_set members in retrieval order (one search limited to them)."""
    members_filter = g.members_filter(q.members)
    if members_filter is None:
        return []
    n = sum(len(g.rows_for(m)) for m in q.members)
    res = ask(top_k=n, filters=members_filter, rerank=False)
    return [name for name in dict.fromkeys(g.name(r) for r in res.results) if name in q.members]


def _subsets(ask: Callable[..., Any], q: EvalQuery, g: Gallery, ranked: list[Ranked]) -> None:
    """Each ranking's subset order; members below the scored depth are placed by their
    retrieval order (one extra search, only when fewer than 3 members made the depth)."""
    need = min(SUBSET_DEPTH, len(q.members))
    order: list[str] | None = None
    for r in ranked:
        r.subset = subset_ranking(r.names, q.members)
        if len(r.subset) < need:
            if order is None:
                order = _member_order(ask, q, g)
            r.subset += [m for m in order if m not in r.subset]


def _image(q: EvalQuery) -> Any:
    if q.image is None:
        return None
    try:
        return decode_image(q.image)
    except InputImageError as e:
        raise EvalInputError(f"row {q.row}: query image: {e}") from e


def _asker(
    engine: Any, q: EvalQuery, g: Gallery, mode: str | None
) -> tuple[Callable[..., Any], float | None]:
    """The searches of one query (``ask(top_k=, rerank=, [filters=])``) and the seconds its
    embedding took: the image decoded once and, where the engine exposes its retriever, the
    query embedded once for all of them (deep retrieval, the rerank's head, subset search)."""
    image = _image(q)
    embed = getattr(getattr(engine, "retriever", None), "embed_query", None)
    run = getattr(engine, "run", None)
    if embed is None or run is None or mode == "keyword":
        ask = functools.partial(
            engine.search, text=q.text, image=image, filters=g.filters, mode=mode
        )
        return ask, None
    bundle = ImageQueryBundle.build(q.text, image)
    t0 = time.perf_counter()
    bundle.embedding = embed(bundle)
    embed_s = time.perf_counter() - t0

    def ask_run(**kwargs: Any) -> Any:
        return run(bundle, **{"filters": g.filters, "mode": mode, **kwargs})

    return ask_run, embed_s


def _charge_embedding(results: Iterable[Any], embed_s: float | None) -> None:
    """Each stage's timings include the query's one embedding (its searches reused it)."""
    if embed_s is None:
        return
    for res in results:
        res.timings["embed_s"] = embed_s
        res.timings["total_s"] = res.timings.get("total_s", 0.0) + embed_s


def rank_query(
    engine: Any,
    q: EvalQuery,
    g: Gallery,
    protocol: protocols.Protocol,
    *,
    mode: str | None,
    stages: Sequence[str],
    top_k: int,
) -> dict[str, tuple[Ranked, Any]]:
    """One query's ranking per stage, with the search result whose status and timings count."""
    exclude = q.exclude if protocol.exclude_reference else set()
    n_excl = sum(len(g.rows_for(n)) for n in exclude) if g.listed else len(exclude)
    depth = protocol.depth + n_excl
    ask, embed_s = _asker(engine, q, g, mode)
    # The rerank sees only its head; the ranks below come from one deeper retrieval.
    deep: Any = None
    if "retrieval" in stages or depth > top_k + n_excl:
        deep = ask(top_k=depth, rerank=False)
    out: dict[str, tuple[Ranked, Any]] = {}
    if deep is not None and "retrieval" in stages:
        out["retrieval"] = (_ranked(deep.results, g, exclude, protocol.depth), deep)
    if "rerank" in stages:
        head = ask(top_k=top_k + n_excl, rerank=True)
        rows = head.results + (deep.results if deep is not None else [])
        out["rerank"] = (_ranked(rows, g, exclude, protocol.depth), head)
    if q.members:
        _subsets(ask, q, g, [r for r, _ in out.values()])
    _charge_embedding((res for _, res in out.values()), embed_s)
    return out


def _probe_queries(prep: Prepared) -> list[tuple[QuerySet, Gallery, EvalQuery]]:
    """The first query, and the first one without text (a mode may need text)."""
    first = (prep.sets[0], prep.galleries[0], prep.sets[0].queries[0])
    textless = next(
        (
            (qs, g, q)
            for qs, g in zip(prep.sets, prep.galleries, strict=True)
            for q in qs.queries
            if not (q.text and q.text.strip())
        ),
        None,
    )
    return [first] if textless is None else [first, textless]


def probe_modes(engine: Any, prep: Prepared, modes: Sequence[str | None]) -> None:
    """Search once per explicit search mode (the first query, and the first one without
    text), so a mode the collection or a query cannot serve fails in one line before any
    long run."""
    for mode in (m for m in modes if m is not None):
        for qs, g, q in _probe_queries(prep):
            try:
                engine.search(
                    text=q.text, image=_image(q), top_k=1, filters=g.filters, rerank=False,
                    mode=mode,
                )  # fmt: skip
            except MMSearchError as e:
                raise ConfigError(f"eval --mode {mode}: {qs.path.name} row {q.row}: {e}") from e


def _run_mode(
    engine: Any,
    prep: Prepared,
    mode: str | None,
    *,
    stages: Sequence[str],
    top_k: int,
    progress: Callable[[], None],
) -> dict[str, _StageLog]:
    logs = {s: _StageLog([[] for _ in prep.sets]) for s in stages}
    for set_no, (qs, g) in enumerate(zip(prep.sets, prep.galleries, strict=True)):
        for q in qs.queries:
            try:
                per_stage = rank_query(
                    engine, q, g, prep.protocol, mode=mode, stages=stages, top_k=top_k
                )
            except EvalInputError as e:
                raise EvalInputError(f"{qs.path}: {e}") from e
            except MMSearchError as e:  # same class (the CLI's exit path), the query named
                raise type(e)(f"{qs.path}: row {q.row}: {e}") from e
            for stage, (ranked, result) in per_stage.items():
                logs[stage].add(set_no, ranked, result)
            progress()
    return logs


def _stage_entry(prep: Prepared, log: _StageLog, out_dir: Path | None, tag: str) -> dict[str, Any]:
    entry = protocols.score(prep.protocol, list(zip(prep.sets, log.ranked, strict=True)))
    entry["rerank_status"] = dict(log.statuses)
    if len(log.modes) > 1:  # the engine's default differs by query kind (text -> hybrid)
        entry["search_mode_counts"] = dict(log.modes)
    entry["latency_ms"] = {k: round(statistics.fmean(v) * 1000, 2) for k, v in log.timings.items()}
    tests = [
        (qs, r) for qs, r in zip(prep.sets, log.ranked, strict=True) if not qs.has_ground_truth
    ]
    if tests:
        folder = (out_dir or Path("submissions")) / tag
        entry["submission"] = [str(p) for qs, r in tests for p in submission.write(folder, qs, r)]
    return entry


def evaluate(
    engine: Any,
    prep: Prepared,
    *,
    stages: Sequence[str] = ("rerank",),
    search_modes: Sequence[str | None] = (None,),
    top_k: int = 10,
    submission_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run every query in each search mode and stage; returns the report dict."""
    unknown = set(stages) - set(STAGES)
    if unknown or not stages:
        raise ConfigError(f"stages must be among {STAGES}, got {list(stages)}")
    probe_modes(engine, prep, search_modes)
    total = sum(len(qs.queries) for qs in prep.sets)
    counter = itertools.count(1)

    def tick(label: str) -> None:
        done = next(counter)
        if progress:
            progress(label, done, total * len(search_modes))

    by_mode: dict[str, dict[str, Any]] = {}
    labels = []
    for mode in search_modes:
        tag = mode or "default"
        logs = _run_mode(
            engine, prep, mode, stages=stages, top_k=top_k, progress=functools.partial(tick, tag)
        )
        ran = set().union(*(log.modes for log in logs.values()))
        label = mode or (ran.pop() if len(ran) == 1 else "default")  # the mode(s) that ran
        labels.append(label)
        by_mode[label] = {
            s: _stage_entry(prep, logs[s], submission_dir, f"{label}-{s}") for s in stages
        }
    return _report(prep, labels, by_mode, top_k, total)


def _report(
    prep: Prepared, labels: list[str], by_mode: dict[str, Any], top_k: int, total: int
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "protocol": prep.protocol.name,
        "files": [str(qs.path) for qs in prep.sets],
        "queries": total,
        "top_k": top_k,
        "depth": prep.protocol.depth,
        "search_modes": labels,
        "gallery": {
            qs.path.name: g.summary for qs, g in zip(prep.sets, prep.galleries, strict=True)
        },
        "warnings": prep.warnings,
    }
    if len(labels) == 1:
        report.update(by_mode[labels[0]])
    else:
        report["by_mode"] = by_mode
    return report
