"""Distributed ingestion on a local Ray (one Ray session for the module; tiny models): the same
rows as the local pipeline, bad files reported, re-runs add nothing, a killed run resumes, and a
Milvus server written straight from the Ray workers."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestion.pipeline import Ingestor
from ingestion.sources import catalog_items
from rag.errors import ConfigError, DistributedError
from rag.store.milvus import CatalogStore
from tests.conftest import REPO, run_cli
from tests.helpers import make_image, write_images

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: pip install 'mmsearch[distributed]' (make test does)"
)

from ingestion.distributed import RayOptions, _pool_shape, ingest_on_ray  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """One local Ray for the module (starting one costs 5-10 s); yields its address."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for attempt in range(2):  # a loaded machine can miss Ray's fixed 30 s node start-up wait
        try:
            ray.init(
                address="local",
                num_cpus=2,
                include_dashboard=False,
                object_store_memory=256 * 1024**2,
                logging_level=logging.ERROR,
            )
            break
        except Exception:
            ray.shutdown()
            if attempt:
                raise
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_unreachable_cluster_is_one_line(
    tmp_path: Path, tiny_embed_dir: Path, tiny_embedding
) -> None:
    """Runs first, before the module's Ray session exists."""
    if ray.is_initialized():
        pytest.skip("needs no Ray session in this process")
    store = _store(str(tmp_path / "m.db"), tiny_embedding)
    with pytest.raises(DistributedError, match="cannot reach Ray at 127.0.0.1:1"):
        ingest_on_ray([], store=store, model_dir=tiny_embed_dir, options=RayOptions("127.0.0.1:1"))
    store.close()


def _catalog(folder: Path, n: int) -> Path:
    """A JSONL catalog of ``n`` images with metadata, plus a corrupt image and a missing one."""
    paths = write_images(folder, n)
    (folder / "corrupt.jpg").write_text("not an image")
    rows = [
        {"id": f"sku-{i}", "image": str(p), "title": f"Item {i}", "price": float(i)}
        for i, p in enumerate(paths)
    ]
    rows += [
        {"id": "bad-1", "image": str(folder / "corrupt.jpg"), "title": "Corrupt"},
        {"id": "bad-2", "image": str(folder / "missing.png"), "title": "Missing"},
    ]
    cat = folder.parent / "catalog.jsonl"
    cat.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return cat


def _store(uri: str, emb) -> CatalogStore:
    return CatalogStore(uri=uri, collection="imgs", dim=emb.dim, model_id=emb.model_name)


def _rows(store: CatalogStore) -> dict[str, tuple[str, str, float, str]]:
    """Per row id: key, title, price and the BM25 search text (the same text on both paths)."""
    res = store.client.query(
        "imgs",
        filter="id != ''",
        output_fields=["id", "item_key", "title", "price", "text"],
        limit=1000,
    )
    return {r["id"]: (r["item_key"], r["title"], r["price"], r["text"]) for r in res}


def _vectors(store: CatalogStore) -> dict[str, list[float]]:
    res = store.client.query(
        "imgs", filter="id != ''", output_fields=["id", "embedding"], limit=1000
    )
    return {r["id"]: list(r["embedding"]) for r in res}


def test_same_rows_as_local_bad_files_rerun_and_change(
    ray_cluster: str, tmp_path: Path, tiny_embed_dir: Path, tiny_embedding
) -> None:
    cat = _catalog(tmp_path / "imgs", 7)
    local = _store(str(tmp_path / "local" / "m.db"), tiny_embedding)
    on_ray = _store(str(tmp_path / "ray" / "m.db"), tiny_embedding)

    def both() -> tuple:
        items = list(catalog_items(cat))
        a = Ingestor(embedding=tiny_embedding, store=local, batch_size=3).run(items)
        b = ingest_on_ray(
            items,
            store=on_ray,
            model_dir=tiny_embed_dir,
            batch_size=3,
            device="cpu",
            dtype="float32",
        )
        return a, b

    a, b = both()
    assert (b.added, b.unchanged, b.replaced, b.embedded) == (7, 0, 0, 7)
    assert sorted(b.failed, key=str) == sorted(a.failed, key=str) and len(b.failed) == 2
    errors = {Path(f["path"]).name: f["error"] for f in b.failed}
    assert "not an image" in errors["corrupt.jpg"] and "no such file" in errors["missing.png"]
    assert _rows(on_ray) == _rows(local) and len(_rows(on_ray)) == 7
    assert {row[3] for row in _rows(on_ray).values()} == {
        row[1] for row in _rows(on_ray).values()
    }  # the search text is the title
    va, vb = _vectors(local), _vectors(on_ray)
    assert all(max(abs(x - y) for x, y in zip(va[k], vb[k], strict=True)) < 1e-5 for k in va)

    a, b = both()  # nothing changed: nothing embedded, nothing written
    assert (b.added, b.unchanged, b.replaced, b.embedded) == (0, 7, 0, 0)

    make_image(500).save(tmp_path / "imgs" / "img_002.png")  # a changed image: replaced
    a, b = both()
    assert (a.replaced, b.replaced, b.unchanged, b.added) == (1, 1, 6, 0)
    assert _rows(on_ray) == _rows(local) and len(_rows(on_ray)) == 7
    local.close()
    on_ray.close()


_KILLED_RUN = """
import os, sys
from pathlib import Path
from ingestion.distributed import RayOptions, ingest_on_ray
from ingestion.sources import folder_items
from rag.embedding.checkpoint import read_model_facts
from rag.store.milvus import CatalogStore
uri, kit, folder, address, kill_at = sys.argv[1:6]
model_id, dim, _ = read_model_facts(Path(kit))
store = CatalogStore(uri=uri, collection="imgs", dim=dim, model_id=model_id)
def progress(done, total):
    if done >= int(kill_at):
        os.kill(os.getpid(), 9)
items = list(folder_items(Path(folder)))
ingest_on_ray(items, store=store, model_dir=Path(kit), batch_size=2, device="cpu", dtype="float32",
              options=RayOptions(address=address), progress=progress)
print("finished")
"""


def test_killed_mid_run_then_cli_rerun_equals_clean_run(
    ray_cluster: str, tmp_path: Path, tiny_embed_dir: Path, tiny_embedding
) -> None:
    from ingestion.sources import folder_items

    folder = tmp_path / "imgs"
    write_images(folder, 8)
    uri = str(tmp_path / "crash" / "m.db")
    # A driver joins the module's cluster and is SIGKILLed after its second written batch.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILLED_RUN,
            uri,
            str(tiny_embed_dir),
            str(folder),
            ray_cluster,
            "4",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -9, err[-2000:]
    crashed = _store(uri, tiny_embedding)
    stored = crashed.count()
    crashed.close()
    assert 0 < stored < 8  # killed mid-run, with some rows stored

    # The re-run, from the command line on the same cluster: only the rest is embedded.
    env = {
        "MMSEARCH_MILVUS_URI": uri,
        "MMSEARCH_COLLECTION": "imgs",
        "MMSEARCH_EMBED_MODEL": str(tiny_embed_dir),
        "MMSEARCH_DEVICE": "cpu",
        "MMSEARCH_EMBED_BATCH_SIZE": "2",
    }
    res = run_cli("ingest", str(folder), "--json", "--ray", ray_cluster, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads(res.stdout)
    assert (rep["added"], rep["unchanged"], rep["failed"]) == (8 - stored, stored, [])

    crashed = _store(uri, tiny_embedding)
    clean = _store(str(tmp_path / "clean" / "m.db"), tiny_embedding)
    Ingestor(embedding=tiny_embedding, store=clean, batch_size=2).run(list(folder_items(folder)))
    assert _rows(crashed) == _rows(clean) and crashed.count() == 8
    crashed.close()
    clean.close()


def test_workers_write_straight_into_a_milvus_server(
    ray_cluster: str, tmp_path: Path, tiny_embed_dir: Path, tiny_embedding, monkeypatch
) -> None:
    """On a server the Ray workers upsert (the C++ engine of tests/cpp_milvus.py; the store's
    model record is supplied as in tests/test_server_path.py, which says why)."""
    from tests.cpp_milvus import CppMilvus, find_engine
    from tests.test_server_path import make_server_collection

    binary, why = find_engine()
    if binary is None:
        pytest.skip(why)
    cat = _catalog(tmp_path / "imgs", 5)
    items = list(catalog_items(cat))
    local = _store(str(tmp_path / "local" / "m.db"), tiny_embedding)
    Ingestor(embedding=tiny_embedding, store=local, batch_size=2).run(items)
    with CppMilvus(binary, tmp_path / "server", transport="tcp") as server:
        make_server_collection(server.uri, "imgs", tiny_embedding.dim)
        model = (tiny_embedding.model_name, tiny_embedding.dim)
        monkeypatch.setattr(CatalogStore, "model_and_dim", lambda self: model)
        srv = _store(server.uri, tiny_embedding)
        added: list[int] = []
        monkeypatch.setattr(srv.vector_store.__class__, "add", lambda *a, **k: added.append(1))
        rep = ingest_on_ray(items, store=srv, model_dir=tiny_embed_dir, batch_size=2, device="cpu")
        monkeypatch.undo()
        assert added == []  # the driver wrote nothing itself
        assert (rep.added, len(rep.failed)) == (5, 2)
        got = {k: v[:2] for k, v in _rows(srv).items()}
        assert got == {k: v[:2] for k, v in _rows(local).items()} and len(got) == 5
        srv.close()
    local.close()


def test_actor_pool_never_takes_the_last_cpu() -> None:
    """Ray waits forever when the embedding actors hold every CPU (the decode tasks never
    start): refused up front instead."""

    class FakeRay:
        def __init__(self, cpus: float, gpus: float = 0) -> None:
            self.res = {"CPU": cpus, "GPU": gpus}

        def cluster_resources(self) -> dict[str, float]:
            return self.res

    assert _pool_shape(FakeRay(2), RayOptions()) == (1, 0.0, 1.0)
    assert _pool_shape(FakeRay(64, 8), RayOptions()) == (8, 1.0, 1.0)
    with pytest.raises(ConfigError, match="leave none for decoding"):
        _pool_shape(FakeRay(2), RayOptions(actors=2))
    with pytest.raises(ConfigError, match="leave none for decoding"):
        _pool_shape(FakeRay(2), RayOptions(actor_cpus=1.5))


def test_cli_ray_flag_and_missing_extra(tmp_path: Path, tiny_embed_dir: Path) -> None:
    from rag.app.cli import _ray_flag

    assert _ray_flag(["ingest", "photos", "--ray"]) == ["ingest", "photos", "--ray="]
    assert _ray_flag(["ingest", "--ray", "photos"]) == ["ingest", "--ray=", "photos"]
    assert _ray_flag(["ingest", "p", "--ray", "ray://head:10001"])[-1] == "ray://head:10001"
    # Without Ray installed: one line naming the extra, exit 1, no traceback.
    fake = tmp_path / "noray"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    folder = write_images(tmp_path / "imgs", 1)[0].parent
    res = run_cli(
        "ingest",
        str(folder),
        "--ray",
        env={
            "PYTHONPATH": f"{fake}{os.pathsep}{REPO}",
            "MMSEARCH_MILVUS_URI": str(tmp_path / "db" / "m.db"),
            "MMSEARCH_EMBED_MODEL": str(tiny_embed_dir),
        },
    )
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "mmsearch[distributed]" in res.stderr and res.stderr.startswith("error: ")
