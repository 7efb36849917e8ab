"""The store's server code path (`unix:` / `http://` URIs) against a real C++ Milvus: the engine
of milvus-lite 2.5.1, run as a server process (tests/cpp_milvus.py; `make test` installs it).

What that engine cannot hold, and so what cannot be tested here: it refuses nullable fields,
keeps no collection properties (ignored at creation; altering them is UNIMPLEMENTED) and offers
no HNSW. mmsearch's collection needs nullable catalog fields and records its embedding model in
the properties, so creating it on this engine fails: that failure is tested (one line, nothing
left behind). The data path (writes, lookups, search, load state, a server that dies and comes
back, ingestion) is tested on a collection the test creates in the closest schema the engine
accepts, with the store's model record supplied by the test (``model_record``), the only part
replaced. A Milvus 2.5+ server holds the full schema (deploy/docker-compose.yml).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_index.core.schema import ImageNode
from llama_index.core.vector_stores import VectorStoreQuery

import rag.store.milvus as milvus_module
from rag.errors import StoreError, StoreMismatchError
from rag.store.milvus import CatalogStore, collection_info, connect, is_lite_uri
from tests.conftest import run_cli
from tests.cpp_milvus import CppMilvus, find_engine
from tests.helpers import write_images

BINARY, WHY = find_engine()
pytestmark = pytest.mark.skipif(BINARY is None, reason=WHY)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CppMilvus]:
    assert BINARY is not None
    with CppMilvus(BINARY, tmp_path / "server") as engine:
        yield engine


def make_server_collection(uri: str, name: str, dim: int) -> None:
    """mmsearch's row layout as far as this engine allows: the always-present fields as real
    (non-nullable) fields, the rest in the dynamic field; FLAT/IP + INVERTED as the store makes."""
    from pymilvus import DataType, MilvusClient

    c = MilvusClient(uri=uri)
    schema = c.create_schema(auto_id=False, enable_dynamic_field=True)
    schema.add_field("id", DataType.VARCHAR, max_length=64, is_primary=True)
    for field in ("item_key", "image_path", "source", "content_sha256"):
        schema.add_field(field, DataType.VARCHAR, max_length=4096)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    index = c.prepare_index_params()
    index.add_index(
        field_name="embedding", index_name="embedding", index_type="FLAT", metric_type="IP"
    )
    for field in ("item_key", "source"):
        index.add_index(field_name=field, index_type="INVERTED", index_name=field)
    c.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    c.close()


@pytest.fixture
def model_record(monkeypatch: pytest.MonkeyPatch):
    """Stand in for the collection properties this engine cannot store: the store reads the
    model id and dimension it would have recorded."""

    def use(model_id: str, dim: int) -> None:
        monkeypatch.setattr(CatalogStore, "model_and_dim", lambda self: (model_id, dim))

    return use


def _node(i: int, vec: list[float]) -> ImageNode:
    key = f"/imgs/{i}.png"
    meta = {"item_key": key, "image_path": key, "source": "/imgs", "content_sha256": f"s{i}"}
    return ImageNode(
        id_=f"id{i}", image_path=key, embedding=vec, metadata={**meta, "title": f"T{i}"}
    )


def test_engine_limits_that_decide_what_is_tested(server: CppMilvus) -> None:
    """Why the product's own collection cannot be created here (if this test fails, the engine
    gained a feature: test the full schema against it)."""
    from pymilvus import DataType, MilvusClient, MilvusException

    c = MilvusClient(uri=server.uri)
    schema = c.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, max_length=8, is_primary=True)
    schema.add_field("t", DataType.VARCHAR, max_length=8, nullable=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    with pytest.raises(MilvusException, match="nullable"):
        c.create_collection("nullable", schema=schema)
    make_server_collection(server.uri, "plain", 2)
    c.create_collection("props", dimension=2, properties={"mmsearch.model": "m"})
    assert "mmsearch.model" not in (c.describe_collection("props").get("properties") or {})
    with pytest.raises(Exception, match="UNIMPLEMENTED"):
        c.alter_collection_properties("props", properties={"mmsearch.model": "m"})
    c.close()


def test_uri_forms_and_token_reach_the_server(tmp_path: Path, server: CppMilvus) -> None:
    sock = str(server.socket)
    for uri in (f"unix:{sock}", f"unix://{sock}"):  # unix:/abs and unix:///abs
        assert not is_lite_uri(uri)
        c = connect(uri, token="root:Milvus")
        assert c.has_collection("mmsearch_images") is False
        c.close()
    with CppMilvus(server.binary, tmp_path / "tcp", transport="tcp") as tcp:
        assert tcp.uri.startswith("http://127.0.0.1:")
        info = collection_info(tcp.uri, "root:Milvus", "mmsearch_images")
        assert (info.exists, info.rows) == (False, 0)
    with pytest.raises(StoreError, match=r"unix:/path/to/milvus\.sock"):
        connect("unix://tmp/milvus.sock")  # host "tmp" to gRPC: refused with the right spelling


def test_product_collection_refused_in_one_line(server: CppMilvus, tiny_embed_dir: Path) -> None:
    for index in ("FLAT", "HNSW"):
        with pytest.raises(StoreError) as e:
            CatalogStore(uri=server.uri, collection="imgs", dim=4, model_id="m", index_type=index)
        msg = str(e.value)
        assert "\n" not in msg and "nullable" in msg and "Milvus 2.5 or newer" in msg
        assert server.uri in msg
    c = connect(server.uri)
    assert c.list_collections() == []  # nothing half-made left behind
    c.close()
    folder = write_images(server.folder / "imgs", 2)[0].parent
    res = run_cli(
        "ingest",
        str(folder),
        env={"MMSEARCH_MILVUS_URI": server.uri, "MMSEARCH_EMBED_MODEL": str(tiny_embed_dir)},
    )
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: ") and "nullable" in res.stderr


def test_foreign_collection_refused(server: CppMilvus) -> None:
    make_server_collection(server.uri, "imgs", 4)
    with pytest.raises(StoreMismatchError, match="not created by mmsearch"):
        CatalogStore(uri=server.uri, collection="imgs", dim=4, model_id="m")


def test_dead_server_is_one_line(server: CppMilvus) -> None:
    uri = server.uri
    server.kill()
    with pytest.raises(StoreError, match="cannot connect to Milvus at") as e:
        CatalogStore(uri=uri, collection="imgs", dim=4, model_id="m")
    assert "\n" not in str(e.value) and "MMSEARCH_MILVUS_URI" in str(e.value)


def test_data_path_load_state_and_reconnect(
    server: CppMilvus, model_record, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymilvus import MilvusClient
    from pymilvus.client.types import LoadState

    make_server_collection(server.uri, "imgs", 4)
    MilvusClient(uri=server.uri).release_collection("imgs")
    model_record("m", 4)
    store = CatalogStore(uri=server.uri, collection="imgs", dim=4, model_id="m")
    assert store.client.get_load_state("imgs")["state"] == LoadState.Loaded  # loaded on open
    store.vector_store.add(
        [_node(0, [1, 0, 0, 0]), _node(1, [0, 1, 0, 0]), _node(2, [0.7, 0.7, 0, 0])]
    )
    assert store.count() == 3
    res = store.vector_store.query(
        VectorStoreQuery(query_embedding=[1, 0, 0, 0], similarity_top_k=2)
    )
    assert res.ids == ["id0", "id2"] and res.nodes[0].metadata["title"] == "T0"
    assert store.rows_by_key(["/imgs/1.png", "/nope"]) == {"/imgs/1.png": ["id1"]}
    assert sorted(store.keys_for_source("/imgs")) == ["/imgs/0.png", "/imgs/1.png", "/imgs/2.png"]
    info = store.info()
    assert (info.index_type, info.metric, info.rows, info.model) == ("FLAT", "IP", 3, "m")

    server.kill()  # the server dies under an open store: every call is one StoreError line
    waits = milvus_module.RECONNECT_WAITS_S
    monkeypatch.setattr(milvus_module, "RECONNECT_WAITS_S", (0.05,))
    calls = (store.count, lambda: store.rows_by_key(["/x"]), lambda: store.delete_ids(["id0"]))
    for call in calls:
        with pytest.raises(StoreError, match=f"at '{server.uri}'") as e:
            call()
        assert "\n" not in str(e.value) and "Fail connecting" in str(e.value)

    # The server comes back while a call is waiting: the call reconnects and succeeds.
    monkeypatch.setattr(milvus_module, "RECONNECT_WAITS_S", waits)
    restart = threading.Timer(0.3, server.start)
    restart.start()
    store.delete_ids(["id1"])
    restart.join()
    assert store.count() == 2
    store.close()
    raw = MilvusClient(uri=server.uri)
    raw.release_collection("imgs")  # as a server restart or another client may leave it
    assert raw.get_load_state("imgs")["state"] == LoadState.NotLoad
    raw.close()
    reopened = CatalogStore(uri=server.uri, collection="imgs", dim=4, model_id="m")
    assert reopened.client.get_load_state("imgs")["state"] == LoadState.Loaded
    res = reopened.vector_store.query(
        VectorStoreQuery(query_embedding=[0, 0.1, 0, 0], similarity_top_k=1)
    )
    assert res.ids == ["id2"]
    reopened.close()


def test_ingestion_into_the_server(
    tmp_path: Path, server: CppMilvus, model_record, tiny_embedding
) -> None:
    """The local pipeline upserts into C++ Milvus: the rows of a Milvus Lite run, a re-run adds
    nothing, a changed image replaces its row."""
    from ingestion.pipeline import Ingestor
    from ingestion.sources import catalog_items
    from tests.helpers import make_image

    paths = write_images(tmp_path / "imgs", 5)
    cat = tmp_path / "cat.jsonl"
    rows = [
        {"id": f"sku-{i}", "image": str(p), "title": f"P{i}", "price": i}
        for i, p in enumerate(paths)
    ]
    cat.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dim, model = tiny_embedding.dim, tiny_embedding.model_name
    lite = CatalogStore(
        uri=str(tmp_path / "lite" / "m.db"), collection="imgs", dim=dim, model_id=model
    )
    make_server_collection(server.uri, "imgs", dim)
    model_record(model, dim)
    srv = CatalogStore(uri=server.uri, collection="imgs", dim=dim, model_id=model)

    def run(store: CatalogStore):
        return Ingestor(embedding=tiny_embedding, store=store, batch_size=2).run(
            list(catalog_items(cat))
        )

    def stored(store: CatalogStore) -> set[tuple[str, str]]:
        res = store.client.query(
            "imgs", filter="id != ''", output_fields=["id", "item_key"], limit=100
        )
        return {(r["id"], r["item_key"]) for r in res}

    assert (run(lite).added, run(srv).added) == (5, 5)
    assert stored(srv) == stored(lite) and len(stored(srv)) == 5
    row = srv.client.query("imgs", filter='item_key == "sku-3"', output_fields=["*"])[0]
    assert row["title"] == "P3" and row["price"] == 3
    rep = run(srv)
    assert (rep.added, rep.unchanged, rep.embedded) == (0, 5, 0)
    make_image(99).save(paths[0])
    assert (run(lite).replaced, run(srv).replaced) == (1, 1)
    assert stored(srv) == stored(lite) and len(stored(srv)) == 5
    lite.close()
    srv.close()
