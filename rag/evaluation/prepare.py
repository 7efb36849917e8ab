"""Everything an evaluation settles before its first query: the query files read and checked,
the protocol, each file's gallery (split files matched to caption files, the collection listed
once) and the query images located."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import ConfigError, EvalInputError
from rag.evaluation import formats
from rag.evaluation import gallery as gallery_mod
from rag.evaluation.gallery import Gallery
from rag.evaluation.protocols import Protocol, choose
from rag.evaluation.queries import ImageIndex, QuerySet, read_query_set, resolve_images

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Query sets, the protocol, a gallery per set, and the warnings so far."""

    protocol: Protocol
    sets: list[QuerySet]
    galleries: list[Gallery]
    warnings: list[str] = field(default_factory=list)


def read_sets(
    paths: Sequence[Path], images: Path | None = None, protocol: str | None = None
) -> tuple[list[QuerySet], Protocol]:
    """Read and check every query file (all rows) and pick the protocol: before any model
    loads, so a bad file fails in a second."""
    index = ImageIndex(images) if images is not None else None
    sets = [read_query_set(p, index) for p in paths]
    proto = choose(protocol, sets)
    if proto.name == "plain":
        for s in sets:
            if not s.has_ground_truth:
                raise ConfigError(f"--protocol plain needs targets: {s.path} is a test split")
    return sets, proto


def load_split(path: Path) -> dict[str, str | None]:
    """An ``image_splits/*.json`` file -> {name: relative path or None}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise EvalInputError(f"{path}: cannot read ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalInputError(f"{path}: invalid JSON ({e})") from e
    return formats.read_split(path, data)


def _key(match: Any) -> tuple[str, str] | None:
    return (match["group"], match["split"]) if match else None


def match_splits(sets: Sequence[QuerySet], splits: Sequence[Path]) -> list[Path | None]:
    """The split file of each query set: ``split.X.json`` goes with ``cap.X.json``; a single
    split file goes with a single query file whatever their names."""
    if not splits:
        return [None] * len(sets)
    if len(splits) == 1 and len(sets) == 1:
        return [splits[0]]
    by_key = {_key(formats.SPLIT_FILE.match(p.name)): p for p in splits}
    out: list[Path | None] = []
    for s in sets:
        key = _key(formats.CAPTION_FILE.match(s.path.name))
        if key is None or key not in by_key:
            want = f"split.{key[0]}.{key[1]}.json" if key else "a split file named after it"
            raise ConfigError(f"no --split-file for {s.path.name} (expected {want})")
        out.append(by_key[key])
    unused = [p.name for p in splits if p not in out]
    if unused:
        raise ConfigError(f"--split-file {', '.join(unused)} matches no query file")
    return out


def _wanted(qs: QuerySet) -> set[str]:
    names: set[str] = set()
    for q in qs.queries:
        names |= q.relevant | set(q.members) | ({q.reference} if q.reference else set())
    return names


def list_collection(engine: Any) -> list[dict[str, Any]] | None:
    """Every row's id, key and image path, or None when the engine's store cannot list."""
    store = getattr(engine, "store", None)
    if store is None or not hasattr(store, "iter_rows"):
        return None
    return list(store.iter_rows(gallery_mod.ROW_FIELDS))


def _gallery(rows: list[dict[str, Any]] | None, qs: QuerySet, split: Path | None) -> Gallery:
    label = qs.path.name
    if rows is None:
        if split is not None:
            raise ConfigError(f"--split-file {split.name}: this collection cannot be listed")
        return gallery_mod.unlisted(label)
    names = load_split(split) if split is not None else None
    g = gallery_mod.build(rows, split=names, split_path=split, wanted=_wanted(qs), label=label)
    if split is None and qs.format != "plain":
        g.warnings.append(
            f"{label}: no --split-file: the gallery is the whole collection "
            f"({len(g.ids_by_name)} images), not the official split (image_splits/*.json)"
        )
    lost = sum(1 for q in qs.queries if q.relevant and not q.relevant & g.ids_by_name.keys())
    if lost and qs.format != "plain":
        g.warnings.append(f"{label}: {lost} queries' targets are not in the gallery (misses)")
    return g


def _locate_images(qs: QuerySet, g: Gallery, images: Path | None) -> None:
    index = ImageIndex(images) if images is not None else None

    def find(name: str) -> str | None:
        if index is not None and (found := index.find(name)):
            return found
        path = g.path_of_name.get(name)
        return path if path and Path(path).is_file() else None

    where = f"under {images}" if images else "in the collection (or pass --images DIR)"
    resolve_images(qs, find, where)


def prepare(
    engine: Any,
    sets: list[QuerySet],
    protocol: Protocol,
    *,
    split_files: Sequence[Path] = (),
    images: Path | None = None,
) -> Prepared:
    """Galleries for ``sets`` (the collection listed once) and their query images located."""
    splits = match_splits(sets, split_files)
    rows = list_collection(engine)
    galleries = [_gallery(rows, qs, sp) for qs, sp in zip(sets, splits, strict=True)]
    for qs, g in zip(sets, galleries, strict=True):
        _locate_images(qs, g, images)
    warnings = [w for g in galleries for w in g.warnings]
    for w in warnings:
        logger.warning("%s", w)
    return Prepared(protocol, sets, galleries, warnings)
