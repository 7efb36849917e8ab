"""Query sets for evaluation: our JSONL, CIRR and FashionIQ caption files -> `EvalQuery`s.

A result counts as relevant when its row id, catalog key, or image file name / stem is in the
query's ``relevant`` set, so annotations can name images the way the data set does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import EvalInputError

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


@dataclass
class EvalQuery:
    """One evaluation query."""

    text: str | None
    image: str | None
    relevant: set[str]
    exclude: set[str] = field(default_factory=set)  # e.g. CIRR's reference image itself


def result_names(row: dict[str, Any]) -> set[str]:
    names = {str(row.get("id")), str(row.get("item_key"))}
    path = row.get("image_path")
    if path:
        p = Path(str(path))
        names |= {p.name, p.stem}
    return {n for n in names if n and n != "None"}


def _find_image(images: Path | None, name: str) -> str:
    if images is None:
        raise EvalInputError(f"image {name!r} is referenced by name: pass --images DIR")
    direct = images / name
    if direct.is_file():
        return str(direct)
    for ext in _IMAGE_EXT:
        cand = images / f"{name}{ext}"
        if cand.is_file():
            return str(cand)
    matches = [p for p in images.rglob(f"{Path(name).stem}.*") if p.suffix.lower() in _IMAGE_EXT]
    if not matches:
        raise EvalInputError(f"image {name!r} not found under {images}")
    return str(matches[0])


def read_queries(path: Path, images: Path | None = None) -> list[EvalQuery]:
    """Our JSONL, a CIRR captions JSON (``reference``/``target_hard``/``caption``) or a
    FashionIQ captions JSON (``candidate``/``target``/``captions``), detected by content."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EvalInputError(f"{path}: cannot read ({e.strerror or e})") from e
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise EvalInputError(f"{path}: invalid JSON ({e.msg})") from e
        if rows and isinstance(rows[0], dict) and "target_hard" in rows[0]:
            return [
                EvalQuery(
                    r["caption"],
                    _find_image(images, r["reference"]),
                    {r["target_hard"]},
                    {r["reference"]},
                )
                for r in rows
            ]
        if rows and isinstance(rows[0], dict) and "captions" in rows[0]:
            return [
                EvalQuery(
                    " and ".join(c.strip() for c in r["captions"] if c.strip()),
                    _find_image(images, r["candidate"]),
                    {r["target"]},
                    {r["candidate"]},
                )
                for r in rows
            ]
        raise EvalInputError(f"{path}: a JSON list, but neither CIRR nor FashionIQ format")
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalInputError(f"{path}:{i}: invalid JSON ({e.msg})") from e
        rel = r.get("relevant")
        if not isinstance(rel, list) or not rel:
            raise EvalInputError(f"{path}:{i}: 'relevant' must be a non-empty list of ids")
        image = r.get("image")
        if image and not Path(image).is_absolute():
            base = images if images is not None else path.parent
            image = str(base / image) if (base / image).exists() else _find_image(images, image)
        if not (r.get("text") or image):
            raise EvalInputError(f"{path}:{i}: needs a 'text', an 'image', or both")
        out.append(EvalQuery(r.get("text"), image, {str(x) for x in rel}))
    if not out:
        raise EvalInputError(f"{path}: no queries")
    return out
