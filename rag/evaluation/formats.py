"""The official CIRR and FashionIQ files, read unchanged: caption files -> `EvalQuery`s, and the
image split files (``image_splits/*.json``).

Every row is checked: a malformed one is a one-line `EvalInputError` naming the file, the row
(its 1-based position in the JSON list) and the field. Field layouts, as the data sets ship:

- CIRR ``cap.rc2.{val,test1}.json``: ``pairid`` (int), ``reference``, ``caption``, ``img_set``
  (``members``: 6 names, the reference among them) and, outside test1, ``target_hard``.
- FashionIQ ``cap.{dress,shirt,toptee}.{val,test}.json``: ``candidate``, ``captions`` (2
  strings) and, outside test, ``target``.
- Splits: CIRR ``split.rc2.<split>.json`` maps name -> relative path; FashionIQ
  ``split.<category>.<split>.json`` is a list of ids.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rag.errors import EvalInputError

CAPTION_FILE = re.compile(r"^cap\.(?P<group>[^.]+)\.(?P<split>[^.]+)\.json$")
SPLIT_FILE = re.compile(r"^split\.(?P<group>[^.]+)\.(?P<split>[^.]+)\.json$")
# Splits that ship without ground truth (answers live on the test servers).
TEST_SPLITS = {"test", "test1", "test2"}
CIRR_KEYS = {"pairid", "reference", "img_set", "target_hard"}
FIQ_KEYS = {"candidate", "captions", "target"}


def detect(rows: list[Any]) -> str | None:
    """``cirr``, ``fashioniq`` or None, from the keys of the first row."""
    first = rows[0] if rows else None
    if not isinstance(first, dict):
        return None
    if CIRR_KEYS & first.keys():
        return "cirr"
    if FIQ_KEYS & first.keys():
        return "fashioniq"
    return None


def name_parts(path: Path) -> tuple[str, str | None]:
    """(group, split) from ``cap.<group>.<split>.json``: CIRR's version or FashionIQ's category;
    (file stem, None) for other names."""
    m = CAPTION_FILE.match(path.name)
    return (m["group"], m["split"]) if m else (path.stem, None)


def has_ground_truth(path: Path, rows: list[Any], target_key: str) -> bool:
    """Test splits (by file name) have no targets; otherwise the first row decides."""
    _, split = name_parts(path)
    if split is not None:
        return split not in TEST_SPLITS
    return isinstance(rows[0], dict) and target_key in rows[0]


def field(path: Path, row_no: int, row: Any, key: str, kind: type, what: str) -> Any:
    """``row[key]``, checked: a one-line error names the file, row and field otherwise."""
    if not isinstance(row, dict):
        raise EvalInputError(f"{path}: row {row_no}: expected an object, got {type(row).__name__}")
    if key not in row:
        raise EvalInputError(f"{path}: row {row_no}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EvalInputError(
            f"{path}: row {row_no}: field {key!r} must be {what}, got {type(value).__name__}"
        )
    return value


def _names(path: Path, row_no: int, value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EvalInputError(f"{path}: row {row_no}: field {key!r} must be a list of strings")
    return value


def cirr_row(path: Path, row_no: int, row: Any, with_target: bool) -> dict[str, Any]:
    """The checked fields of one CIRR row (``target`` None on test1)."""
    pairid = field(path, row_no, row, "pairid", int, "an integer")
    reference = field(path, row_no, row, "reference", str, "an image name")
    caption = field(path, row_no, row, "caption", str, "a string")
    img_set = field(path, row_no, row, "img_set", dict, "an object")
    if "members" not in img_set:
        raise EvalInputError(f"{path}: row {row_no}: missing field 'img_set.members'")
    members = _names(path, row_no, img_set["members"], "img_set.members")
    target = field(path, row_no, row, "target_hard", str, "an image name") if with_target else None
    return {
        "pairid": pairid,
        "reference": reference,
        "caption": caption,
        "members": [m for m in members if m != reference],
        "target": target,
    }


def join_captions(captions: list[str]) -> str:
    """CLIP4Cir's joining of the two FashionIQ captions (src/validate.py L89-92):
    ``f"{c0.strip('.?, ').capitalize()} and {c1.strip('.?, ')}"``; empty ones are skipped."""
    parts = [c.strip(".?, ") for c in captions]
    parts = [p for p in parts if p]
    if not parts:
        return ""
    return " and ".join([parts[0].capitalize(), *parts[1:]])


def fiq_row(path: Path, row_no: int, row: Any, with_target: bool) -> dict[str, Any]:
    """The checked fields of one FashionIQ row (``target`` None on test)."""
    candidate = field(path, row_no, row, "candidate", str, "an image id")
    captions = _names(
        path, row_no, field(path, row_no, row, "captions", list, "a list"), "captions"
    )
    target = field(path, row_no, row, "target", str, "an image id") if with_target else None
    return {"candidate": candidate, "text": join_captions(captions), "target": target}


def read_split(path: Path, data: Any) -> dict[str, str | None]:
    """An image split: CIRR's ``{name: relative path}`` or FashionIQ's ``[id, ...]`` ->
    ``{name: relative path or None}``."""
    if isinstance(data, dict):
        for name, rel in data.items():
            if not isinstance(rel, str):
                raise EvalInputError(f"{path}: entry {name!r}: the path must be a string")
        return dict(data)
    if isinstance(data, list):
        for i, name in enumerate(data, start=1):
            if not isinstance(name, str):
                raise EvalInputError(f"{path}: entry {i}: must be an image id (string)")
        return dict.fromkeys(data)
    raise EvalInputError(f"{path}: not an image split (CIRR: {{name: path}}, FashionIQ: [id, ...])")
