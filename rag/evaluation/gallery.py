"""The evaluation gallery: which collection rows a query set's rankings may hold, and the data
set name of each row.

The official galleries are the split files (``image_splits/split.*.json``: CIRR val 2,297
images, FashionIQ dress val 3,817). With a split, the candidates are restricted to its images by
a filter on the primary key (``id in [...]``, or ``id not in [...]`` when the rows outside the
split are fewer): a scalar field, so Milvus evaluates it fast (docs/architecture.md, "Milvus").
When the collection holds exactly the split, nothing is filtered. Rows are named the way the
data sets name images: by image file stem, else by catalog key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_index.core.vector_stores import FilterOperator, MetadataFilter, MetadataFilters

ROW_FIELDS = ("id", "item_key", "image_path")


def row_names(row: dict[str, Any]) -> list[str]:
    """The names a row may have in a data set, preferred first: image file stem, catalog key
    (and its stem, for keys that are paths), row id."""
    out = []
    for value in (row.get("image_path"), row.get("item_key")):
        if value:
            out.append(Path(str(value)).stem)
    for value in (row.get("item_key"), row.get("id")):
        if value:
            out.append(str(value))
    return list(dict.fromkeys(out))


def _id_filter(ids: list[str], op: FilterOperator) -> MetadataFilters:
    return MetadataFilters(filters=[MetadataFilter(key="id", value=ids, operator=op)])


@dataclass
class Gallery:
    """The candidates of one query set.

    ``listed`` is False when the collection could not be listed (then names come from the
    results alone, and no split can be applied).
    """

    ids_by_name: dict[str, list[str]] = field(default_factory=dict)
    name_of_id: dict[str, str] = field(default_factory=dict)
    path_of_name: dict[str, str] = field(default_factory=dict)
    filters: MetadataFilters | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    listed: bool = False

    def name(self, row: dict[str, Any]) -> str:
        """The data set name of a result row."""
        known = self.name_of_id.get(str(row.get("id")))
        return known if known is not None else (row_names(row) or ["?"])[0]

    def rows_for(self, name: str) -> list[str]:
        return self.ids_by_name.get(name, [])

    def members_filter(self, names: Iterable[str]) -> MetadataFilters | None:
        """A filter on the rows of ``names`` (None when none of them is in the gallery)."""
        ids = [i for n in names for i in self.rows_for(n)]
        return _id_filter(ids, FilterOperator.IN) if ids else None


def _restrict(
    in_ids: list[str], out_ids: list[str], split_path: Path | None
) -> tuple[MetadataFilters | None, str]:
    if split_path is None or not out_ids:
        return None, "none"
    if len(in_ids) <= len(out_ids):
        return _id_filter(in_ids, FilterOperator.IN), f"id in the split's {len(in_ids)} rows"
    return _id_filter(out_ids, FilterOperator.NIN), f"id not in the {len(out_ids)} other rows"


def build(
    rows: Iterable[dict[str, Any]],
    *,
    split: dict[str, str | None] | None,
    split_path: Path | None,
    wanted: set[str],
    label: str,
) -> Gallery:
    """The gallery of one query set from the collection's rows (``ROW_FIELDS``).

    Args:
        rows: every row of the collection.
        split: the split's names (None: the whole collection).
        split_path: the split file (for the report).
        wanted: names the queries mention (references, targets, members): a row is named by
            the first of its names found in the split, else in ``wanted``, else its stem.
        label: the query set (for warnings).
    """
    known = set(split) if split is not None else wanted
    g = Gallery(listed=True)
    in_ids: list[str] = []
    out_ids: list[str] = []
    for row in rows:
        names = row_names(row)
        hit = next((n for n in names if n in known), None)
        rid = str(row["id"])
        if split is not None and hit is None:
            out_ids.append(rid)
            continue
        name = hit or names[0]
        in_ids.append(rid)
        g.name_of_id[rid] = name
        g.ids_by_name.setdefault(name, []).append(rid)
        if row.get("image_path"):
            g.path_of_name.setdefault(name, str(row["image_path"]))
    g.filters, how = _restrict(in_ids, out_ids, split_path)
    missing = sorted(set(split) - g.ids_by_name.keys()) if split is not None else []
    g.summary = {
        "split_file": str(split_path) if split_path else None,
        "images": len(g.ids_by_name),
        "collection_rows": len(in_ids) + len(out_ids),
        "outside_split": len(out_ids),
        "missing_from_collection": len(missing),
        "restricted_by": how,
    }
    g.warnings = _warnings(g, split, split_path, missing, out_ids, label)
    return g


def _warnings(
    g: Gallery,
    split: dict[str, str | None] | None,
    split_path: Path | None,
    missing: list[str],
    out_ids: list[str],
    label: str,
) -> list[str]:
    out: list[str] = []
    if split is None or split_path is None:
        return out
    if out_ids:
        out.append(
            f"{label}: {len(out_ids)} of the collection's {g.summary['collection_rows']} images "
            f"are not in {split_path.name}; they are left out of the rankings"
        )
    if missing:
        out.append(
            f"{label}: {len(missing)} of the {len(split)} images of {split_path.name} are not in "
            f"the collection (e.g. {', '.join(missing[:3])}); ingest them for the official gallery"
        )
    dup = sum(1 for ids in g.ids_by_name.values() if len(ids) > 1)
    if dup:
        out.append(f"{label}: {dup} images are stored in more than one row; each counts once")
    return out


def unlisted(label: str) -> Gallery:
    """The gallery of a collection that cannot be listed: the whole collection, unchecked."""
    return Gallery(
        summary={"split_file": None, "restricted_by": "none", "images": None},
        warnings=[f"{label}: the collection cannot be listed; gallery and split not checked"],
    )
