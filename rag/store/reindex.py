"""`mmsearch reindex`: (re)build a collection's search text from the metadata it stores.

No row is embedded again: vectors and metadata are read back from the collection.

* A collection WITH the BM25 text index gets its text rewritten in place (upserts; every row
  exists before, during and after).
* A collection WITHOUT it (made before mmsearch indexed catalog text) cannot gain a field or a
  function in place (Milvus Lite answers UNIMPLEMENTED), so the rows are copied into a new
  collection that has the index, counted, marked complete, and the names are swapped:
  ``C -> C__old``, ``C__reindex -> C``, then ``C__old`` is dropped. At every step the rows exist
  in at least one complete collection, and a run cut short at any step is finished (or undone)
  by :func:`recover_interrupted_reindex` the next time the collection is opened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from rag.errors import StoreError
from rag.store.schema import (
    EMBEDDING_FIELD,
    ID_FIELD,
    PROP_HAS_TEXT,
    PROP_REINDEXED,
    PROP_TEXT_FIELDS,
    REINDEX_NEW_SUFFIX,
    REINDEX_OLD_SUFFIX,
    SPARSE_FIELD,
    TEXT_FIELD,
)
from rag.store.text import catalog_text, parse_text_fields

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from rag.store.milvus import CatalogStore

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class ReindexReport:
    """What a reindex did; ``mmsearch reindex --json`` prints :meth:`to_dict`."""

    collection: str
    rows: int
    with_text: int
    text_fields: list[str]
    rebuilt: bool  # True: copied into a new collection with the text index; False: in place
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


def _text_of(row: dict[str, Any], fields: Sequence[str]) -> str:
    """The search text of a stored row, from the node's metadata (as ingestion built it)."""
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    try:
        metadata = metadata_dict_to_node(row).metadata
    except Exception:  # a row not written by LlamaIndex: its fields are the metadata
        metadata = row
    return catalog_text(metadata, fields)


def _rows(client: MilvusClient, collection: str, batch_size: int) -> Iterator[list[dict]]:
    it = client.query_iterator(collection, batch_size=batch_size, filter="", output_fields=["*"])
    try:
        while batch := it.next():
            yield batch
    finally:
        it.close()


def _with_text(rows: list[dict[str, Any]], fields: Sequence[str]) -> int:
    n = 0
    for row in rows:
        row.pop(SPARSE_FIELD, None)  # a function output: Milvus computes it from the text
        row[TEXT_FIELD] = _text_of(row, fields)
        n += bool(row[TEXT_FIELD])
    return n


def reindex(
    store: CatalogStore,
    text_fields: Sequence[str] | None = None,
    *,
    batch_size: int = 1000,
    progress: Progress | None = None,
) -> ReindexReport:
    """Build the search text of every row of ``store`` from ``text_fields`` (default: the
    collection's recorded fields, or title + description), adding the text index if missing.

    Stop ingestion into the collection while this runs: rows written meanwhile may be missed
    (the rebuild then refuses to swap, the row counts differ).
    """
    started = time.perf_counter()
    fields = parse_text_fields(text_fields) if text_fields is not None else store.text_fields
    if store.has_text_index:
        rows, with_text = _rewrite_in_place(store, fields, batch_size, progress)
        rebuilt = False
    else:
        rows, with_text = _rebuild(store, fields, batch_size, progress)
        rebuilt = True
    store.refresh()
    return ReindexReport(
        store.collection, rows, with_text, list(fields), rebuilt, time.perf_counter() - started
    )


def _rewrite_in_place(
    store: CatalogStore, fields: tuple[str, ...], batch_size: int, progress: Progress | None
) -> tuple[int, int]:
    from rag.store.expr import literal

    client, name = store.client, store.collection
    # Recorded first: an ingest running after a crash here already uses the new fields, and
    # running reindex again finishes the rows.
    store.set_properties({PROP_TEXT_FIELDS: ",".join(fields)})
    ids: list[str] = []
    it = client.query_iterator(name, batch_size=batch_size, filter="", output_fields=[ID_FIELD])
    try:
        while batch := it.next():
            ids.extend(r[ID_FIELD] for r in batch)
    finally:
        it.close()
    with_text = 0
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        rows = client.query(name, filter=f"{ID_FIELD} in {literal(chunk)}", output_fields=["*"])
        with_text += _with_text(rows, fields)
        client.upsert(name, rows)
        if progress:
            progress(start + len(chunk), len(ids))
    store.flush()
    store.set_properties({PROP_HAS_TEXT: "true" if with_text else "false"})
    return len(ids), with_text


def _index_settings(store: CatalogStore) -> dict[str, Any]:
    """The vector index of ``store``, as CatalogStore arguments for its copy."""
    try:
        idx = store.client.describe_index(store.collection, EMBEDDING_FIELD)
    except Exception:  # no index description: the default FLAT
        return {"index_type": "FLAT"}
    kind = str(idx.get("index_type") or "FLAT").upper()
    if kind != "HNSW":
        return {"index_type": "FLAT"}
    params = idx.get("params") or idx
    return {
        "index_type": "HNSW",
        "hnsw_m": int(params.get("M", 16)),
        "hnsw_ef_construction": int(params.get("efConstruction", 200)),
    }


def _rebuild(
    store: CatalogStore, fields: tuple[str, ...], batch_size: int, progress: Progress | None
) -> tuple[int, int]:
    from rag.store.milvus import CatalogStore, short_error

    client, name = store.client, store.collection
    new = name + REINDEX_NEW_SUFFIX
    recover_interrupted_reindex(client, name)
    if client.has_collection(new):  # a copy cut short: the live collection is intact
        client.drop_collection(new)
    model, dim = store.model_and_dim()
    total = store.count()
    target = CatalogStore(
        uri=store.uri,
        collection=new,
        dim=dim,
        model_id=model,
        client=client,
        text_index=True,
        text_fields=fields,
        **_index_settings(store),
    )
    copied = with_text = 0
    try:
        for rows in _rows(client, name, batch_size):
            with_text += _with_text(rows, fields)
            client.insert(new, rows)
            copied += len(rows)
            if progress:
                progress(copied, total)
        target.flush()
        if target.count() != total:
            raise StoreError(
                f"reindex of {name!r} copied {target.count()} of {total} rows (was something "
                "ingesting meanwhile?); nothing was changed, run it again"
            )
    except Exception as e:
        client.drop_collection(new)
        if isinstance(e, StoreError):
            raise
        raise StoreError(f"reindex of {name!r} failed: {short_error(e)}; nothing changed") from e
    target.set_properties(
        {PROP_REINDEXED: "complete", PROP_HAS_TEXT: "true" if with_text else "false"}
    )
    _swap(client, name)
    return total, with_text


def _swap(client: MilvusClient, name: str) -> None:
    """Put the complete copy in place of ``name``; each step is recoverable (module doc)."""
    client.rename_collection(name, name + REINDEX_OLD_SUFFIX)
    client.rename_collection(name + REINDEX_NEW_SUFFIX, name)
    client.load_collection(name)  # a renamed collection comes back unloaded
    client.drop_collection(name + REINDEX_OLD_SUFFIX)


def _complete(client: MilvusClient, name: str) -> bool:
    props = dict(client.describe_collection(name)).get("properties", {}) or {}
    return props.get(PROP_REINDEXED) == "complete"


def recover_interrupted_reindex(client: MilvusClient, name: str) -> None:
    """Finish or undo a reindex of ``name`` that stopped part-way (see the module doc).

    ``name`` missing: the complete copy takes its place, else the old collection goes back.
    ``name`` present: a leftover copy (never swapped in) or old collection (already replaced
    by a complete copy) is dropped.
    """
    names = set(client.list_collections())
    new, old = name + REINDEX_NEW_SUFFIX, name + REINDEX_OLD_SUFFIX
    if name not in names:
        if new in names and _complete(client, new):
            logger.warning("finishing an interrupted reindex of %s", name)
            client.rename_collection(new, name)
            names = {name, *(names - {new})}
        elif old in names:
            logger.warning("undoing an interrupted reindex of %s", name)
            client.rename_collection(old, name)
            names = {name, *(names - {old})}
        else:
            return
    if new in names:
        client.drop_collection(new)
    if old in names:
        if not _complete(client, name):
            raise StoreError(
                f"collections {name!r} and {old!r} both exist and {name!r} is not a completed "
                f"reindex; keep the one you want and drop the other"
            )
        client.drop_collection(old)
