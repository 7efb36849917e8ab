"""Query sets for evaluation: our JSONL, and the CIRR / FashionIQ caption files -> `QuerySet`s.

A result counts as relevant when its row id, catalog key, or image file name / stem is in the
query's ``relevant`` set, so annotations can name images the way the data set does. The
benchmarks name their query images; `ImageIndex` finds them under a folder (one walk), or the
caller resolves them from the collection (`resolve_images`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import EvalInputError
from rag.evaluation import formats

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


@dataclass
class EvalQuery:
    """One evaluation query.

    ``reference`` is the data set's name of the query image (CIRR ``reference``, FashionIQ
    ``candidate``); ``exclude`` holds it for protocols that drop it from its own results.
    """

    text: str | None
    image: str | None
    relevant: set[str]
    exclude: set[str] = field(default_factory=set)
    qid: str = ""  # CIRR pairid; otherwise the row number
    reference: str | None = None
    members: tuple[str, ...] = ()  # CIRR img_set members, the reference left out
    row: int = 0  # 1-based row (JSON list) or line (JSONL)
    entry: dict[str, Any] | None = None  # the original row (FashionIQ submissions copy it)


@dataclass
class QuerySet:
    """The queries of one file, its format, and whether it carries ground truth."""

    path: Path
    format: str  # "cirr" | "fashioniq" | "plain"
    queries: list[EvalQuery]
    has_ground_truth: bool = True
    group: str = ""  # CIRR version / FashionIQ category / the file stem
    split: str | None = None

    @property
    def label(self) -> str:
        return f"{self.group}.{self.split}" if self.split else self.group


def result_names(row: dict[str, Any]) -> set[str]:
    """Every name a result row answers to: row id, catalog key, image file name and stem."""
    names = {str(row.get("id")), str(row.get("item_key"))}
    for value in (row.get("image_path"), row.get("item_key")):
        if value:
            p = Path(str(value))
            names |= {p.name, p.stem}
    return {n for n in names if n and n != "None"}


class ImageIndex:
    """The image files under a folder, by file name and by stem (one walk, on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._by_name: dict[str, str] | None = None

    def _build(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                if Path(name).suffix.lower() in _IMAGE_EXT:
                    path = str(Path(dirpath) / name)
                    out.setdefault(name, path)
                    out.setdefault(Path(name).stem, path)
        return out

    def find(self, name: str) -> str | None:
        """The file for ``name`` (a relative path, a file name, or a stem), or None."""
        direct = self.root / name
        if direct.is_file():
            return str(direct)
        if self._by_name is None:
            self._by_name = self._build()
        return self._by_name.get(Path(name).name) or self._by_name.get(Path(name).stem)


def _load_json_list(path: Path, text: str) -> list[Any]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise EvalInputError(f"{path}: invalid JSON ({e.msg})") from e
    if not rows:
        raise EvalInputError(f"{path}: no queries")
    return list(rows)


def _benchmark_set(path: Path, rows: list[Any]) -> QuerySet:
    kind = formats.detect(rows)
    if kind is None:
        raise EvalInputError(
            f"{path}: a JSON list, but neither CIRR (pairid/reference/img_set) nor FashionIQ "
            "(candidate/captions) format"
        )
    group, split = formats.name_parts(path)
    gt = formats.has_ground_truth(path, rows, "target_hard" if kind == "cirr" else "target")
    queries = []
    for i, row in enumerate(rows, start=1):
        if kind == "cirr":
            r = formats.cirr_row(path, i, row, gt)
            q = EvalQuery(
                r["caption"], None, set(), qid=str(r["pairid"]), members=tuple(r["members"])
            )
        else:
            r = formats.fiq_row(path, i, row, gt)
            r["reference"] = r["candidate"]
            q = EvalQuery(r["text"], None, set(), qid=str(i), entry=row)
        q.reference, q.exclude, q.row = r["reference"], {r["reference"]}, i
        q.relevant = {r["target"]} if r["target"] is not None else set()
        queries.append(q)
    return QuerySet(path, kind, queries, gt, group, split)


def _jsonl_set(path: Path, text: str, images: ImageIndex | None) -> QuerySet:
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalInputError(f"{path}:{i}: invalid JSON ({e.msg})") from e
        if not isinstance(r, dict):
            raise EvalInputError(f"{path}:{i}: expected a JSON object per line")
        rel = r.get("relevant")
        if not isinstance(rel, list) or not rel:
            raise EvalInputError(f"{path}:{i}: 'relevant' must be a non-empty list of ids")
        image = r.get("image")
        if image and not Path(image).is_absolute():
            base = images.root if images is not None else path.parent
            image = str(base / image) if (base / image).exists() else _find(images, image)
        if not (r.get("text") or image):
            raise EvalInputError(f"{path}:{i}: needs a 'text', an 'image', or both")
        out.append(EvalQuery(r.get("text"), image, {str(x) for x in rel}, qid=str(i), row=i))
    if not out:
        raise EvalInputError(f"{path}: no queries")
    return QuerySet(path, "plain", out, True, path.stem, None)


def _find(images: ImageIndex | None, name: str) -> str:
    if images is None:
        raise EvalInputError(f"image {name!r} is referenced by name: pass --images DIR")
    found = images.find(name)
    if found is None:
        raise EvalInputError(f"image {name!r} not found under {images.root}")
    return found


def read_query_set(path: Path, images: ImageIndex | None = None) -> QuerySet:
    """Our JSONL, a CIRR captions JSON or a FashionIQ captions JSON, detected by content.

    Benchmark query images are named, not located: see `resolve_images`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EvalInputError(f"{path}: cannot read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise EvalInputError(f"{path}: not UTF-8 text ({e.reason})") from e
    if text.lstrip().startswith("["):
        return _benchmark_set(path, _load_json_list(path, text))
    return _jsonl_set(path, text, images)


def resolve_images(qs: QuerySet, find: Callable[[str], str | None], where: str) -> None:
    """Set each benchmark query's ``image`` to the file of its reference image."""
    for q in qs.queries:
        if q.reference is None or q.image is not None:
            continue
        q.image = find(q.reference)
        if q.image is None:
            raise EvalInputError(
                f"{qs.path}: row {q.row}: query image {q.reference!r} not found {where}"
            )


def read_queries(path: Path, images: Path | None = None) -> list[EvalQuery]:
    """The queries of one file with their images located under ``images``."""
    index = ImageIndex(images) if images is not None else None
    qs = read_query_set(path, index)
    if qs.format != "plain":
        resolve_images(qs, lambda name: _find(index, name), f"under {images}")
    return qs.queries
