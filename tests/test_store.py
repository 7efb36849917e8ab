import time
from pathlib import Path

import pytest
from llama_index.core.schema import ImageNode
from llama_index.core.vector_stores import MetadataFilter, MetadataFilters, VectorStoreQuery

from rag.errors import StoreError, StoreLockedError, StoreMismatchError
from rag.store.milvus import CatalogStore, collection_info
from tests.helpers import lite_lock_held


def _node(i: int, vec: list[float], **meta: object) -> ImageNode:
    key = f"/imgs/{i}.png"
    return ImageNode(
        id_=f"id{i}",
        image_path=key,
        embedding=vec,
        metadata={"item_key": key, "image_path": key, "source": "/imgs", **meta},
    )


def test_create_insert_search_reopen_delete(milvus_uri: str) -> None:
    store = CatalogStore(uri=milvus_uri, collection="imgs", dim=4, model_id="m1")
    assert Path(milvus_uri).parent.is_dir()  # parent created
    info = store.info()
    assert (info.rows, info.dim, info.model, info.index_type, info.metric) == (
        0,
        4,
        "m1",
        "FLAT",
        "IP",
    )
    store.vector_store.add(
        [
            _node(0, [1, 0, 0, 0], category="shoes", price=10.0),
            _node(1, [0, 1, 0, 0], category="bags", price=99.0),
            _node(2, [0.7071, 0.7071, 0, 0], category="shoes"),
        ]
    )
    assert store.count() == 3
    res = store.vector_store.query(
        VectorStoreQuery(query_embedding=[1, 0, 0, 0], similarity_top_k=3)
    )
    assert res.ids == ["id0", "id2", "id1"]
    assert res.similarities[0] == pytest.approx(1.0, abs=1e-5)
    assert isinstance(res.nodes[0], ImageNode) and res.nodes[0].image_path == "/imgs/0.png"
    filtered = store.vector_store.query(
        VectorStoreQuery(
            query_embedding=[1, 0, 0, 0],
            similarity_top_k=3,
            filters=MetadataFilters(filters=[MetadataFilter(key="category", value="bags")]),
        )
    )
    assert filtered.ids == ["id1"]
    assert store.rows_by_key(["/imgs/1.png", "/nope"]) == {"/imgs/1.png": ["id1"]}
    store.close()

    # A reopened Lite collection comes back released; the store loads it.
    store = CatalogStore(uri=milvus_uri, collection="imgs", dim=4, model_id="m1")
    assert store.count() == 3
    res = store.vector_store.query(
        VectorStoreQuery(query_embedding=[0, 1, 0, 0], similarity_top_k=1)
    )
    assert res.ids == ["id1"]
    store.delete_ids(["id1"])
    assert store.count() == 2
    assert sorted(store.keys_for_source("/imgs")) == ["/imgs/0.png", "/imgs/2.png"]
    store.close()


def test_hnsw_index(milvus_uri: str) -> None:
    store = CatalogStore(uri=milvus_uri, collection="h", dim=4, model_id="m", index_type="hnsw")
    assert store.info().index_type == "HNSW"
    # HNSW searches ask for a wide search (a server's default breadth is only the top k).
    assert store.vector_store.search_params == {"metric_type": "IP", "params": {"ef": 128}}
    store.vector_store.add([_node(i, [1.0, i / 10, 0, 0]) for i in range(5)])
    res = store.vector_store.query(
        VectorStoreQuery(query_embedding=[0, 1, 0, 0], similarity_top_k=2)
    )
    assert res.ids == ["id4", "id3"]
    store.close()


def test_auto_index_and_lite_scale_note(milvus_uri: str) -> None:
    from rag.store.milvus import LITE_COMFORT_ROWS, lite_scale_note, resolve_index_type

    store = CatalogStore(uri=milvus_uri, collection="a", dim=4, model_id="m", index_type="auto")
    assert store.info().index_type == "FLAT"  # Milvus Lite: exact search
    assert store.vector_store.search_params == {"metric_type": "IP"}
    store.close()
    for uri in ("http://milvus:19530", "unix:/run/milvus.sock", "https://x.zillizcloud.com"):
        assert resolve_index_type("AUTO", uri) == "HNSW"
    assert resolve_index_type("flat", "http://milvus:19530") == "FLAT"
    with pytest.raises(StoreError, match="index_type must be one of"):
        resolve_index_type("IVF_PQ", milvus_uri)
    assert lite_scale_note(milvus_uri, LITE_COMFORT_ROWS) is None
    note = lite_scale_note(milvus_uri, LITE_COMFORT_ROWS + 1)
    assert note is not None and "\n" not in note and "Milvus server" in note
    assert lite_scale_note("http://milvus:19530", 10**7) is None


@pytest.mark.parametrize(("dim", "model"), [(8, "m1"), (4, "other-model")])
def test_mismatch_refused(milvus_uri: str, dim: int, model: str) -> None:
    CatalogStore(uri=milvus_uri, collection="imgs", dim=4, model_id="m1").close()
    with pytest.raises(StoreMismatchError) as e:
        CatalogStore(uri=milvus_uri, collection="imgs", dim=dim, model_id=model)
    msg = str(e.value)
    assert "'m1'" in msg and "dim 4" in msg and repr(model) in msg and f"dim {dim}" in msg


def test_missing_collection_without_create(milvus_uri: str) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        CatalogStore(uri=milvus_uri, collection="nothing", create=False, dim=None)
    info = collection_info(milvus_uri, "", "nothing")
    assert info.exists is False and info.rows == 0


def test_bad_lite_path(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"must end in '\.db'"):
        CatalogStore(uri=str(tmp_path / "x.sqlite"), collection="c", dim=4, model_id="m")


def test_unreachable_server() -> None:
    with pytest.raises(StoreError, match="cannot connect to Milvus at 'http://127.0.0.1:1'"):
        CatalogStore(uri="http://127.0.0.1:1", collection="c", dim=4, model_id="m")


def test_second_process_gets_lock_error(milvus_uri: str) -> None:
    CatalogStore(uri=milvus_uri, collection="imgs", dim=4, model_id="m1").close()
    with lite_lock_held(milvus_uri):
        started = time.monotonic()
        with pytest.raises(StoreLockedError, match="another process has the Milvus Lite database"):
            CatalogStore(uri=milvus_uri, collection="imgs", dim=4, model_id="m1")
        assert time.monotonic() - started < 30  # fails fast, no hang


def test_compose_file_pins_official_images() -> None:
    """deploy/docker-compose.yml (not runnable here: no Docker): every image is pinned and the
    server it starts is the one the README points MMSEARCH_MILVUS_URI at."""
    import yaml

    repo = Path(__file__).resolve().parent.parent
    compose = yaml.safe_load((repo / "deploy" / "docker-compose.yml").read_text())
    images = {name: svc["image"] for name, svc in compose["services"].items()}
    assert set(images) == {"etcd", "minio", "milvus"}
    assert images["milvus"].startswith("milvusdb/milvus:v2.5.")  # 2.5+: nullable fields, BM25
    assert all(":" in i and not i.endswith(":latest") for i in images.values()), images
    assert "19530:19530" in compose["services"]["milvus"]["ports"]
    readme = (repo / "README.md").read_text()
    assert "MMSEARCH_MILVUS_URI=http://localhost:19530" in readme
    assert "deploy/docker-compose.yml" in readme


def test_cli_says_once_when_lite_outgrows_itself(
    catalog, clean_env: Path, tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stats` and `ingest` print one note line (stderr) past LITE_COMFORT_ROWS; --json stays
    one JSON document on stdout."""
    import json

    from typer.testing import CliRunner

    from rag.app.cli import app

    store, folder, _ = catalog  # 12 rows
    store.close()
    monkeypatch.setenv("MMSEARCH_MILVUS_URI", store.uri)
    monkeypatch.setenv("MMSEARCH_EMBED_MODEL", str(tiny_embed_dir))
    runner = CliRunner()
    quiet = runner.invoke(app, ["stats", "--json"])
    assert quiet.exit_code == 0 and "note:" not in quiet.stderr
    monkeypatch.setattr("rag.store.milvus.LITE_COMFORT_ROWS", 10)
    for args in (["stats", "--json"], ["ingest", str(folder), "--json"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert isinstance(json.loads(res.stdout), dict)
        notes = [line for line in res.stderr.splitlines() if line.startswith("note:")]
        assert len(notes) == 1 and "Milvus server" in notes[0], res.stderr
