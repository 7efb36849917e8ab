"""The Milvus layer: create or reopen the image collection and wrap it as a LlamaIndex store.

One collection holds one embedding model's vectors. The model id and dimension are recorded as
collection properties when the collection is created and checked on every reopen, so vectors of
two models are never mixed. The index is always created explicitly (IP metric on L2-normalised
vectors), and a reopened collection is loaded before use (Milvus Lite reopens it "released").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rag.errors import ConfigError, MMSearchError, StoreError, StoreLockedError, StoreMismatchError
from rag.store.expr import quote
from rag.store.schema import (
    BM25_FUNCTION,
    DEFAULT_TEXT_FIELDS,
    DOC_ID_FIELD,
    EMBEDDING_FIELD,
    ID_FIELD,
    ID_MAX_LEN,
    PROP_DIM,
    PROP_HAS_TEXT,
    PROP_MODEL,
    PROP_TEXT_FIELDS,
    REINDEX_NEW_SUFFIX,
    REINDEX_OLD_SUFFIX,
    SCALAR_FIELDS,
    SPARSE_FIELD,
    TEXT_ANALYZER,
    TEXT_FIELD,
    TEXT_MAX_BYTES,
)
from rag.store.text import parse_text_fields

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from rag.store.vector_store import CatalogVectorStore

logger = logging.getLogger(__name__)

INDEX_TYPES = ("AUTO", "FLAT", "HNSW")
# HNSW's search breadth. A server's default is the top k (ef 9): recall@9 ~0.7 in
# benchmarks/scale.py; 128 reached 0.99-1.0 at 10k-30k rows in Milvus Lite at the same latency
# (its per-row Python work dominates, not the graph walk).
HNSW_SEARCH_EF = 128
# Milvus Lite 3.x searches every stored row in Python on each query (benchmarks/scale.py,
# FLAT top-9 p50: 37 ms at 10k rows, 123 ms at 30k, 389 ms at 100k on a loaded 2-core VM):
# past ~20k rows (where p50 crosses ~100 ms, interpolated, rounded down) a server is the fix.
LITE_COMFORT_ROWS = 20_000
_QUERY_CHUNK = 500
# Waits before retrying a call whose server connection was lost: a restarting server has a few
# seconds to come back (gRPC itself backs off ~1 s before reconnecting).
RECONNECT_WAITS_S: tuple[float, ...] = (0.5, 1.0, 2.0)
T = TypeVar("T")


@dataclass(frozen=True)
class CollectionInfo:
    """What `mmsearch stats` reports about a collection."""

    uri: str
    collection: str
    exists: bool
    rows: int
    dim: int | None
    model: str | None
    index_type: str | None
    metric: str | None
    text_index: bool = False
    text_fields: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_lite_uri(uri: str) -> bool:
    """Milvus Lite is addressed by a local path; servers by http(s)/tcp URIs or a unix socket
    (``unix:/abs/path.sock``, ``unix:///abs/path.sock``)."""
    return "://" not in uri and not uri.lower().startswith("unix:")


def _check_server_uri(uri: str) -> None:
    """``unix://tmp/x.sock`` reads as host ``tmp`` to gRPC: say which spellings work."""
    if uri.lower().startswith("unix://") and not uri.lower().startswith("unix:///"):
        raise StoreError(
            f"Milvus URI {uri!r} is not a socket path gRPC understands; write the absolute "
            "path as unix:/path/to/milvus.sock or unix:///path/to/milvus.sock"
        )


def _causes(exc: BaseException) -> Iterable[BaseException]:
    """``exc`` and what caused it; bounded, because pymilvus chains errors to themselves."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return
        yield seen
        nxt = seen.__cause__ or seen.__context__
        seen = None if nxt is seen else nxt


def _caused_by_lock(exc: BaseException) -> bool:
    return any(
        type(e).__name__ == "DataDirLockedError" or "holds the lock" in str(e) for e in _causes(exc)
    )


def connect(uri: str, token: str = "", *, timeout_s: float = 10.0) -> MilvusClient:
    """Open a MilvusClient, translating the usual failures into one-line StoreErrors."""
    from pymilvus import MilvusClient

    if is_lite_uri(uri):
        path = Path(uri).expanduser()
        if not path.name.endswith(".db"):
            raise StoreError(
                f"Milvus Lite path {uri!r} must end in '.db' (e.g. ./data/mmsearch.db), "
                "or use a server URI like http://localhost:19530"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the folder for Milvus Lite file {uri!r}: {e}") from e
        uri = str(path)
    else:
        _check_server_uri(uri)
    try:
        return MilvusClient(uri=uri, token=token, timeout=timeout_s)
    except Exception as e:  # pymilvus raises several unrelated types here
        if _caused_by_lock(e) or (is_lite_uri(uri) and _lite_locked(uri)):
            raise StoreLockedError(
                f"another process has the Milvus Lite database {uri!r} open (Milvus Lite allows "
                "one process at a time): stop that process, or use a Milvus server "
                "(MMSEARCH_MILVUS_URI=http://host:19530) to share the index"
            ) from e
        hint = (
            "check that the server is running and MMSEARCH_MILVUS_URI / MMSEARCH_MILVUS_TOKEN "
            "are right"
            if not is_lite_uri(uri)
            else "check the path and its permissions"
        )
        raise StoreError(f"cannot connect to Milvus at {uri!r}: {short_error(e)}; {hint}") from e


def _lite_locked(path: str) -> bool:
    """Whether another process holds Milvus Lite's data-directory lock on ``path``."""
    try:
        import fcntl

        from milvus_lite.db import LOCK_FILENAME
    except ImportError:  # other platforms / engine versions: no probe
        return False
    lock_file = Path(path) / LOCK_FILENAME
    if not lock_file.exists():
        return False
    with open(lock_file, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def release_lite(uri: str) -> None:
    """Stop this process's in-process Milvus Lite server for ``uri`` and free its lock."""
    if not is_lite_uri(uri):
        return
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return
    server_manager_instance.release_server(str(Path(uri).expanduser()))


def call_with_reconnect(where: str, action: str, fn: Callable[[], T]) -> T:
    """Run one client call. A lost server connection is retried for a few seconds (a
    restarting server; pymilvus reconnects by itself once it is back; the store's calls are
    idempotent); whatever is still raised becomes one StoreError line naming ``where``."""
    for wait in (*RECONNECT_WAITS_S, None):
        try:
            return fn()
        except MMSearchError:
            raise
        except Exception as e:
            if wait is None or not connection_lost(e):
                raise StoreError(f"cannot {action} in {where}: {short_error(e)}") from e
            logger.info("Milvus unreachable (%s); retrying in %.1fs", where, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises


def resolve_index_type(index_type: str, uri: str) -> str:
    """``AUTO``: FLAT on Milvus Lite (exact, no index build after each ingest, fast enough up to
    :data:`LITE_COMFORT_ROWS`), HNSW on a server (FLAT's cost grows with every row)."""
    kind = index_type.upper()
    if kind not in INDEX_TYPES:
        raise StoreError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
    if kind == "AUTO":
        return "FLAT" if is_lite_uri(uri) else "HNSW"
    return kind


def lite_scale_note(uri: str, rows: int) -> str | None:
    """One line for a Milvus Lite collection grown past where its search stays quick."""
    if not is_lite_uri(uri) or rows <= LITE_COMFORT_ROWS:
        return None
    return (
        f"note: {rows:,} rows in Milvus Lite, which searches every row in Python on each query "
        f"(measured top-9 p50 ~120 ms at 30k rows, ~390 ms at 100k); beyond "
        f"{LITE_COMFORT_ROWS:,} rows use a Milvus server (README, 'Scale')"
    )


def connection_lost(e: BaseException) -> bool:
    """Whether ``e`` says the server could not be reached (as opposed to a refused request)."""
    for err in _causes(e):
        code = getattr(err, "code", None)
        name = getattr(code(), "name", "") if callable(code) else ""
        if name == "UNAVAILABLE" or "Fail connecting to server" in short_error(err):
            return True
    return False


def short_error(e: BaseException) -> str:
    """One line for any error pymilvus lets through: a MilvusException (whose ``str`` is a
    repr), a raw gRPC error (``code()`` + ``details()``, e.g. a call a server does not
    implement), or anything else."""
    message = getattr(e, "message", None)  # MilvusException's str() is a repr
    if isinstance(message, str) and message.strip():
        return message.strip().splitlines()[0][:300]
    code, details = getattr(e, "code", None), getattr(e, "details", None)
    if callable(code) and callable(details):  # grpc.RpcError
        try:
            name = getattr(code(), "name", str(code()))
            lines = str(details() or "").strip().splitlines()
            return f"{name}: {lines[0] if lines else 'no details'}"[:300]
        except Exception:  # a half-initialised RpcError: fall through to its text
            logger.debug("unreadable gRPC error", exc_info=True)
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:300]


class CatalogStore:
    """The image collection of one catalog: schema, index, model guard and row helpers.

    Args:
        uri: Milvus Lite file (``./data/x.db``) or server URI.
        token: server token ('' for none / Lite).
        collection: collection name.
        dim: embedding dimension; required to create the collection.
        model_id: embedding model id recorded with (and checked against) the collection.
        index_type: ``FLAT`` (exact), ``HNSW`` or ``AUTO`` (:func:`resolve_index_type`) for new
            collections.
        create: create the collection when it does not exist.
        text_index: give a new collection the BM25 text index (catalog text -> sparse vector
            by Milvus' built-in function); keyword and hybrid search need it.
        text_fields: catalog fields a new collection builds its search text from.
    """

    def __init__(
        self,
        *,
        uri: str,
        token: str = "",
        collection: str,
        dim: int | None = None,
        model_id: str | None = None,
        index_type: str = "FLAT",
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 200,
        create: bool = True,
        client: MilvusClient | None = None,
        text_index: bool = True,
        text_fields: Sequence[str] = DEFAULT_TEXT_FIELDS,
    ) -> None:
        if not collection or not collection.replace("_", "").isalnum():
            raise StoreError(
                f"collection name {collection!r} is invalid: use letters, digits and '_'"
            )
        index_type = resolve_index_type(index_type, uri)
        if dim is not None and dim <= 0:
            raise StoreError(f"dim must be > 0, got {dim}")
        self.uri = uri
        self.collection = collection
        self._index_type = index_type
        self._hnsw = {"M": hnsw_m, "efConstruction": hnsw_ef_construction}
        self._client = client or connect(uri, token)
        self._vector_store: CatalogVectorStore | None = None
        self._desc: dict[str, Any] = {}
        try:
            self._open(dim, model_id, create, text_index, parse_text_fields(text_fields))
        except Exception as e:
            if client is None:  # ours: free the connection (and a Lite file's lock)
                self.close()
            if isinstance(e, MMSearchError):
                raise
            # Whatever else the client raises (MilvusException, a raw gRPC error for a call
            # the server does not implement) becomes one line.
            raise StoreError(
                f"cannot open collection {collection!r} at {uri!r}: {short_error(e)}"
            ) from e

    def _collection_names(self) -> list[str]:
        try:
            return list(self._client.list_collections())
        except Exception as e:
            raise StoreError(f"cannot list collections at {self.uri!r}: {short_error(e)}") from e

    def _open(
        self,
        dim: int | None,
        model_id: str | None,
        create: bool,
        text_index: bool,
        text_fields: tuple[str, ...],
    ) -> None:
        names = self._collection_names()
        if _reindex_leftovers(self.collection, names):
            from rag.store.reindex import recover_interrupted_reindex

            recover_interrupted_reindex(self._client, self.collection)
            names = self._collection_names()
        if self.collection in names:
            self._check_compatible(dim, model_id)
            self._ensure_loaded()
        elif not create or dim is None or model_id is None:
            raise StoreError(
                f"collection {self.collection!r} does not exist at {self.uri!r}; ingest images "
                "first (mmsearch ingest PATH)"
            )
        else:
            try:
                self._create(dim, model_id, text_index, text_fields)
            except Exception as e:
                self._drop_half_created()
                raise StoreError(self._creation_problem(e, text_index)) from e

    def _drop_half_created(self) -> None:
        """A failed creation can leave a collection behind (a server that refuses the index
        still creates the collection): drop it, so the next run does not find a collection
        without the model record and refuse it as foreign."""
        try:
            if self._client.has_collection(self.collection):
                self._client.drop_collection(self.collection)
        except Exception:  # the server is gone: nothing more we can clean up
            logger.debug("could not drop half-created %s", self.collection, exc_info=True)

    def _creation_problem(self, e: Exception, text_index: bool) -> str:
        """One line saying why the server refused the collection, and what to do."""
        what = short_error(e)
        head = f"Milvus at {self.uri!r} refused to create collection {self.collection!r}"
        if isinstance(e, MMSearchError):
            return str(e)
        if "nullable" in what.lower():
            return (
                f"{head} ({what}): mmsearch's schema needs nullable scalar fields, which "
                "need Milvus 2.5 or newer (a Milvus server, or the default Milvus Lite 3.x)"
            )
        if "index" in what.lower() and self._index_type in what:
            return f"{head} ({what}): set MMSEARCH_INDEX_TYPE to another index, e.g. FLAT"
        if "UNIMPLEMENTED" in what:
            return (
                f"{head} ({what}): the server cannot store collection properties, where "
                "mmsearch records the embedding model; use Milvus 2.5 or newer"
            )
        hint = " (BM25 text search needs Milvus 2.5 or newer)" if text_index else ""
        return f"{head}: {what}{hint}"

    # -- creation and checks -------------------------------------------------------------
    def _schema(self, dim: int, text_index: bool) -> Any:
        from pymilvus import DataType, Function, FunctionType

        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field(ID_FIELD, DataType.VARCHAR, max_length=ID_MAX_LEN, is_primary=True)
        schema.add_field(DOC_ID_FIELD, DataType.VARCHAR, max_length=512, nullable=True)
        analyzed = {"enable_analyzer": True, "analyzer_params": TEXT_ANALYZER} if text_index else {}
        schema.add_field(
            TEXT_FIELD, DataType.VARCHAR, max_length=TEXT_MAX_BYTES, nullable=True, **analyzed
        )
        for name, kind, max_len in SCALAR_FIELDS:
            if kind == "VARCHAR":
                schema.add_field(name, DataType.VARCHAR, max_length=max_len, nullable=True)
            else:
                schema.add_field(name, DataType.DOUBLE, nullable=True)
        schema.add_field(EMBEDDING_FIELD, DataType.FLOAT_VECTOR, dim=dim)
        if text_index:
            # The schema is fixed at creation (Milvus Lite cannot add a field or a function
            # later), so every new collection gets the text index, whether or not its first
            # catalog has text; rows without text are indexed all the same.
            schema.add_field(SPARSE_FIELD, DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(
                Function(
                    name=BM25_FUNCTION,
                    function_type=FunctionType.BM25,
                    input_field_names=[TEXT_FIELD],
                    output_field_names=[SPARSE_FIELD],
                )
            )
        return schema

    def _create(
        self, dim: int, model_id: str, text_index: bool, text_fields: tuple[str, ...]
    ) -> None:
        c = self._client
        schema = self._schema(dim, text_index)
        properties = {PROP_MODEL: model_id, PROP_DIM: str(dim)}
        if text_index:
            properties[PROP_TEXT_FIELDS] = ",".join(text_fields)
        try:
            self._create_collection(schema, properties, scalar_indexes=True)
        except Exception:
            # Some deployments reject scalar INVERTED indexes; the vector index matters.
            if c.has_collection(self.collection):
                raise
            self._create_collection(schema, properties, scalar_indexes=False)
        props = self._describe().get("properties", {})
        if PROP_MODEL not in props:
            # Older servers ignore properties at creation time.
            c.alter_collection_properties(self.collection, properties=properties)
            self._desc = {}
        self._ensure_loaded()
        logger.info(
            "created collection %s (dim %d, %s, IP%s)",
            self.collection,
            dim,
            self._index_type,
            ", BM25 text index" if text_index else "",
        )

    def _create_collection(
        self, schema: Any, properties: dict[str, str], *, scalar_indexes: bool
    ) -> None:
        index_params = self._client.prepare_index_params()
        index_params.add_index(
            field_name=EMBEDDING_FIELD,
            index_name=EMBEDDING_FIELD,
            index_type=self._index_type,
            metric_type="IP",
            params=self._hnsw if self._index_type == "HNSW" else {},
        )
        if any(f.name == SPARSE_FIELD for f in schema.fields):
            index_params.add_index(
                field_name=SPARSE_FIELD,
                index_name=SPARSE_FIELD,
                index_type="SPARSE_INVERTED_INDEX",
                metric_type="BM25",
            )
        if scalar_indexes:
            for name in ("item_key", "source"):
                index_params.add_index(field_name=name, index_type="INVERTED", index_name=name)
        self._client.create_collection(
            self.collection,
            schema=schema,
            index_params=index_params,
            consistency_level="Strong",
            properties=properties,
        )

    def _describe(self) -> dict[str, Any]:
        """The collection's description (cached; our own property changes reset it)."""
        if self._desc:
            return self._desc
        try:
            self._desc = dict(self._client.describe_collection(self.collection))
        except Exception as e:
            raise StoreError(
                f"cannot describe collection {self.collection!r} at {self.uri!r}: {short_error(e)}"
            ) from e
        return self._desc

    def _check_compatible(self, dim: int | None, model_id: str | None) -> None:
        stored_model, stored_dim = self.model_and_dim()
        if stored_model is None:
            raise StoreMismatchError(
                f"collection {self.collection!r} at {self.uri!r} was not created by mmsearch "
                "(no model recorded); choose another MMSEARCH_COLLECTION"
            )
        if (model_id is not None and model_id != stored_model) or (
            dim is not None and dim != stored_dim
        ):
            raise StoreMismatchError(
                f"collection {self.collection!r} holds embeddings of model {stored_model!r} "
                f"(dim {stored_dim}), but the configured model is {model_id!r} (dim {dim}); "
                "use the same model, or another collection (MMSEARCH_COLLECTION)"
            )

    def model_and_dim(self) -> tuple[str | None, int | None]:
        """The model id and dimension recorded with the collection."""
        desc = self._describe()
        props = desc.get("properties", {}) or {}
        dim: int | None = None
        for field in desc.get("fields", []):
            if field.get("name") == EMBEDDING_FIELD:
                dim = int(field.get("params", {}).get("dim"))
        return props.get(PROP_MODEL), dim

    # -- the text index -----------------------------------------------------------------
    @property
    def has_text_index(self) -> bool:
        """Whether the collection has the BM25 text index (keyword and hybrid search)."""
        return any(
            SPARSE_FIELD in (f.get("output_field_names") or [])
            for f in self._describe().get("functions", []) or []
        )

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The catalog fields this collection builds its search text from."""
        recorded = (self._describe().get("properties", {}) or {}).get(PROP_TEXT_FIELDS)
        return parse_text_fields(recorded) if recorded else DEFAULT_TEXT_FIELDS

    def set_properties(self, properties: dict[str, str]) -> None:
        """Record mmsearch properties on the collection."""
        try:
            self._client.alter_collection_properties(self.collection, properties=properties)
        except Exception as e:
            raise StoreError(
                f"cannot set properties of collection {self.collection!r}: {short_error(e)}"
            ) from e
        self._desc = {}

    def use_text_fields(self, fields: Sequence[str] | None) -> tuple[str, ...]:
        """The text fields an ingest into this collection uses: ``fields`` when given (recorded
        if the collection is still empty), else the recorded ones.

        Raises:
            ConfigError: ``fields`` differ from the recorded ones and rows exist (mixing two
                definitions of the text in one index would make BM25 scores meaningless).
        """
        recorded = self.text_fields
        if fields is None:
            return recorded
        wanted = parse_text_fields(fields)
        if wanted == recorded or not self.has_text_index:
            return wanted
        if self.count() == 0:
            self.set_properties({PROP_TEXT_FIELDS: ",".join(wanted)})
            return wanted
        raise ConfigError(
            f"collection {self.collection!r} builds its search text from "
            f"{','.join(recorded)}; ingest with --text-fields {','.join(recorded)}, or change "
            f"it for every row with `mmsearch reindex --text-fields {','.join(wanted)}`"
        )

    def refresh(self) -> None:
        """Forget what was read about the collection (after it was rebuilt by a reindex)."""
        self._desc = {}
        self._vector_store = None
        self._ensure_loaded()

    def _ensure_loaded(self) -> None:
        from pymilvus.client.types import LoadState

        try:
            state = self._client.get_load_state(self.collection).get("state")
            if state != LoadState.Loaded:
                self._client.load_collection(self.collection)
        except Exception as e:
            raise StoreError(
                f"cannot load collection {self.collection!r} at {self.uri!r}: {short_error(e)}"
            ) from e

    def _search_params(self) -> dict[str, Any]:
        """IP, and for an HNSW collection a search breadth (:data:`HNSW_SEARCH_EF`)."""
        try:
            kind = self._client.describe_index(self.collection, EMBEDDING_FIELD).get("index_type")
        except Exception:  # an index-less foreign collection: the engine's defaults
            logger.debug("no index description for %s", self.collection, exc_info=True)
            kind = None
        if kind == "HNSW":
            return {"metric_type": "IP", "params": {"ef": HNSW_SEARCH_EF}}
        return {"metric_type": "IP"}

    # -- LlamaIndex --------------------------------------------------------------------
    @property
    def client(self) -> MilvusClient:
        return self._client

    @property
    def vector_store(self) -> CatalogVectorStore:
        """This collection as a LlamaIndex vector store (on this store's client)."""
        if self._vector_store is None:
            from rag.store.vector_store import CatalogVectorStore

            props = self._describe().get("properties", {}) or {}
            self._vector_store = CatalogVectorStore(
                client=self._client,
                collection_name=self.collection,
                text_search=self.has_text_index,
                has_text=props.get(PROP_HAS_TEXT) == "true",
                search_params=self._search_params(),
            )
        return self._vector_store

    # -- row helpers used by ingestion and stats ------------------------------------------
    def call(self, action: str, fn: Callable[[], T]) -> T:
        """Run one client call for ``action`` (see :func:`call_with_reconnect`)."""
        return call_with_reconnect(f"collection {self.collection!r} at {self.uri!r}", action, fn)

    def count(self) -> int:
        """Number of rows (exact, strong consistency)."""
        res = self.call(
            "count rows",
            lambda: self._client.query(self.collection, filter="", output_fields=["count(*)"]),
        )
        return int(res[0]["count(*)"])

    def rows_by_key(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """Map item_key -> ids of rows stored for it."""
        out: dict[str, list[str]] = {}
        for chunk in _chunks(list(dict.fromkeys(keys)), _QUERY_CHUNK):
            expr = f"item_key in [{', '.join(quote(k) for k in chunk)}]"
            res = self.call(
                "look up rows",
                lambda expr=expr: self._client.query(  # type: ignore[misc]
                    self.collection, filter=expr, output_fields=[ID_FIELD, "item_key"]
                ),
            )
            for row in res:
                out.setdefault(row["item_key"], []).append(row[ID_FIELD])
        return out

    def keys_for_source(self, source: str) -> dict[str, list[str]]:
        """Map item_key -> ids for every row ingested from ``source``."""
        return self.call("list the rows of a source", lambda: self._keys_for_source(source))

    def _keys_for_source(self, source: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        it = self._client.query_iterator(
            self.collection,
            batch_size=1000,
            filter=f"source == {quote(source)}",
            output_fields=[ID_FIELD, "item_key"],
        )
        try:
            while True:
                batch = it.next()
                if not batch:
                    break
                for row in batch:
                    out.setdefault(row["item_key"], []).append(row[ID_FIELD])
        finally:
            it.close()
        return out

    def iter_rows(self, fields: Sequence[str], batch_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every row's ``fields`` (e.g. the evaluation's gallery check), in batches."""
        try:
            it = self._client.query_iterator(
                self.collection, batch_size=batch_size, filter="", output_fields=list(fields)
            )
        except Exception as e:
            raise StoreError(f"cannot list rows of {self.collection!r}: {short_error(e)}") from e
        try:
            while batch := it.next():
                yield from batch
        finally:
            it.close()

    def flush(self) -> None:
        """Seal what was written. Milvus Lite searches unsealed rows by brute force in Python:
        measured here at 10k rows, ~800 ms per search before a flush, ~20 ms after."""
        self.call("flush rows", lambda: self._client.flush(self.collection))

    def delete_ids(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        for chunk in _chunks(ids, _QUERY_CHUNK):
            self.call(
                "delete rows",
                lambda chunk=chunk: self._client.delete(self.collection, ids=chunk),  # type: ignore[misc]
            )
        return len(ids)

    def info(self) -> CollectionInfo:
        model, dim = self.model_and_dim()
        index_type = metric = None
        try:
            idx = self._client.describe_index(self.collection, EMBEDDING_FIELD)
            index_type, metric = idx.get("index_type"), idx.get("metric_type")
        except Exception:  # an index-less foreign collection still reports rows
            logger.debug("no index description for %s", self.collection, exc_info=True)
        return CollectionInfo(
            uri=self.uri,
            collection=self.collection,
            exists=True,
            rows=self.count(),
            dim=dim,
            model=model,
            index_type=index_type,
            metric=metric,
            text_index=self.has_text_index,
            text_fields=list(self.text_fields) if self.has_text_index else None,
        )

    def close(self) -> None:
        """Close the client; for Milvus Lite also free the file so other processes can open it."""
        try:
            self._client.close()
        except Exception:  # closing twice or a dead server: nothing left to release
            logger.debug("close failed", exc_info=True)
        release_lite(self.uri)


def _reindex_leftovers(collection: str, names: Sequence[str]) -> bool:
    return bool({collection + REINDEX_NEW_SUFFIX, collection + REINDEX_OLD_SUFFIX} & set(names))


def _chunks(items: list[str], n: int) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def collection_info(uri: str, token: str, collection: str) -> CollectionInfo:
    """Stats for `mmsearch stats`; a missing collection reports ``exists=False``, 0 rows."""
    client = connect(uri, token)
    try:
        names = client.list_collections()
        # A name missing while an interrupted reindex's collections exist is recovered on open.
        if collection not in names and not _reindex_leftovers(collection, names):
            return CollectionInfo(uri, collection, False, 0, None, None, None, None)
        return CatalogStore(uri=uri, collection=collection, create=False, client=client).info()
    finally:
        client.close()
        release_lite(uri)
