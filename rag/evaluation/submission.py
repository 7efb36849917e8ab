"""Submission files for the test splits (no ground truth), in the official shapes.

- CIRR (test server, Cuberick-Orion/CIRR Test-split_server.md and demo_files/): two JSON
  objects, ``{"version": "rc2", "metric": "recall", "<pairid>": [top-50 names], ...}`` and the
  same with ``"metric": "recall_subset"`` and the top 3 of each query's ``img_set`` (reference
  left out), named as the authors' generator and demo files name them:
  ``<split>_pred_ranks_recall.json`` / ``<split>_pred_ranks_recall_subset.json``
  (CIRPLANT model/OSCAR/OSCAR_CIRPLANT.py L346-380).
- FashionIQ: every caption entry copied with a ``ranking`` of the top-50 ids over the whole
  split gallery, reference kept (starter kit start_kit/eval.py L56-71), one file per category
  named as the challenge's submission zip expects: ``<category>.predict.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rag.errors import EvalInputError
from rag.evaluation.protocols import SUBMISSION_DEPTH, SUBSET_DEPTH, Ranked
from rag.evaluation.queries import QuerySet

logger = logging.getLogger(__name__)


def _dump(path: Path, data: Any, indent: int | None = None) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=indent, ensure_ascii=False), encoding="utf-8")
    except OSError as e:
        raise EvalInputError(f"{path}: cannot write the submission ({e.strerror or e})") from e
    return path


def cirr(folder: Path, qs: QuerySet, ranked: list[Ranked]) -> list[Path]:
    """The recall and recall_subset files of one CIRR test split."""
    version = qs.group if qs.split else "rc2"
    split = qs.split or "test1"
    recall: dict[str, Any] = {"version": version, "metric": "recall"}
    subset: dict[str, Any] = {"version": version, "metric": "recall_subset"}
    for q, r in zip(qs.queries, ranked, strict=True):
        recall[q.qid] = r.names[:SUBMISSION_DEPTH]
        subset[q.qid] = r.subset[:SUBSET_DEPTH]
    short = sum(1 for r in ranked if len(r.names) < SUBMISSION_DEPTH)
    if short:
        logger.warning("%s: %d queries have fewer than 50 candidates", qs.path.name, short)
    return [
        _dump(folder / f"{split}_pred_ranks_recall.json", recall),
        _dump(folder / f"{split}_pred_ranks_recall_subset.json", subset),
    ]


def fashioniq(folder: Path, qs: QuerySet, ranked: list[Ranked]) -> list[Path]:
    """``<category>.predict.json``: the caption entries, each with its top-50 ``ranking``."""
    out = [
        {**(q.entry or {}), "ranking": r.names[:SUBMISSION_DEPTH]}
        for q, r in zip(qs.queries, ranked, strict=True)
    ]
    return [_dump(folder / f"{qs.group}.predict.json", out, indent=4)]


def write(folder: Path, qs: QuerySet, ranked: list[Ranked]) -> list[Path]:
    """The submission files of one test query set, in ``folder``."""
    writer = cirr if qs.format == "cirr" else fashioniq
    return writer(folder, qs, ranked)
