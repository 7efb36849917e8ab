import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ingestion.pipeline import Ingestor
from ingestion.sources import catalog_items, folder_items, items_for
from rag.embedding.multimodal import VisualizedBGEEmbedding
from rag.errors import SourceError
from rag.store.milvus import CatalogStore
from tests.conftest import REPO, run_cli
from tests.helpers import http_server, make_image, write_images


def _store(uri: str, e: VisualizedBGEEmbedding) -> CatalogStore:
    return CatalogStore(uri=uri, collection="imgs", dim=e.dim, model_id=e.model_name)


def _rows(store: CatalogStore) -> set[tuple[str, str]]:
    res = store.client.query("imgs", filter="", output_fields=["id", "item_key"], limit=10_000)
    return {(r["id"], r["item_key"]) for r in res}


def _ingest(store, emb, items, **kw):
    return Ingestor(
        embedding=emb, store=store, batch_size=4, cache_dir=kw.pop("cache", None), **kw
    ).run(items)


def test_folder_ingest_rerun_change_and_prune(
    tmp_path: Path, milvus_uri: str, tiny_embedding: VisualizedBGEEmbedding
) -> None:
    folder = tmp_path / "cat"
    paths = write_images(folder, 6) + write_images(folder / "sub", 3, start=6, ext="jpg")
    (folder / "notes.txt").write_text("not an image, not listed")
    store = _store(milvus_uri, tiny_embedding)
    rep = _ingest(store, tiny_embedding, list(folder_items(folder)))
    assert (rep.added, rep.unchanged, rep.failed) == (9, 0, [])
    assert store.count() == 9
    first_rows = _rows(store)

    # Re-running adds nothing and embeds nothing.
    rep = _ingest(store, tiny_embedding, list(folder_items(folder)))
    assert (rep.added, rep.unchanged, rep.replaced, rep.embedded) == (0, 9, 0, 0)
    assert _rows(store) == first_rows

    # A changed image replaces its row (same key, new id); nothing else moves.
    make_image(100).save(paths[0])
    rep = _ingest(store, tiny_embedding, list(folder_items(folder)))
    assert (rep.added, rep.unchanged, rep.replaced) == (0, 8, 1)
    rows = _rows(store)
    assert len(rows) == 9 and {k for _, k in rows} == {k for _, k in first_rows}
    assert rows != first_rows

    # --prune removes rows whose file vanished.
    paths[1].unlink()
    rep = Ingestor(embedding=tiny_embedding, store=store).run(
        list(folder_items(folder)), prune_sources=[str(folder.resolve())]
    )
    assert rep.pruned == 1 and store.count() == 8
    assert str(paths[1].resolve()) not in {k for _, k in _rows(store)}


def test_stored_metadata_and_search(
    tmp_path: Path, milvus_uri: str, tiny_embedding: VisualizedBGEEmbedding
) -> None:
    folder = tmp_path / "cat"
    write_images(folder, 3)
    catalog = tmp_path / "cat.jsonl"
    catalog.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {
                    "id": "sku-1",
                    "image": "cat/img_000.png",
                    "title": "Leopard case",
                    "category": "Cell_Phones",
                    "price": "$12.50",
                    "brand": "Acme",
                },
                {"id": "sku-2", "image": "cat/img_001.png", "title": "Red shoe", "price": 30},
            ]
        )
    )
    store = _store(milvus_uri, tiny_embedding)
    rep = _ingest(store, tiny_embedding, list(catalog_items(catalog)))
    assert rep.added == 2
    row = store.client.query("imgs", filter='item_key == "sku-1"', output_fields=["*"])[0]
    assert row["title"] == "Leopard case" and row["category"] == "Cell_Phones"
    assert row["price"] == 12.5 and row["brand"] == "Acme"
    assert row["image_path"] == str((folder / "img_000.png").resolve())
    # the catalog text is the node's text (BM25-indexed); written once, embedded never
    assert row["text"] == "Leopard case"


def test_catalog_with_urls_via_loopback_server(
    tmp_path: Path, milvus_uri: str, tiny_embedding: VisualizedBGEEmbedding
) -> None:
    served = tmp_path / "www"
    write_images(served, 4)
    (served / "broken.jpg").write_bytes(b"<html>not an image</html>")
    with http_server(served) as base:
        catalog = tmp_path / "cat.csv"
        lines = ["id,image,title,price"]
        lines += [f"p{i},{base}/img_{i:03d}.png,Item {i},{i}.5" for i in range(4)]
        lines += [
            f"dead,{base}/missing.png,Gone,1",
            f"junk,{base}/broken.jpg,Junk,1",
            "refused,http://127.0.0.1:1/x.png,Nope,1",
        ]
        catalog.write_text("\n".join(lines) + "\n")
        store = _store(milvus_uri, tiny_embedding)
        items = list(catalog_items(catalog))
        # The SSRF guard refuses loopback URLs unless the catalog is explicitly trusted.
        guarded = _ingest(store, tiny_embedding, items, cache=tmp_path / "cache")
        assert guarded.added == 0 and len(guarded.failed) == 7
        assert all("is a loopback address" in f["error"] for f in guarded.failed)
        rep = _ingest(
            store, tiny_embedding, items, cache=tmp_path / "cache", allow_private_urls=True
        )
        assert rep.added == 4
        errors = {f["path"].rsplit("/", 1)[-1]: f["error"] for f in rep.failed}
        assert errors["missing.png"] == "HTTP 404"
        assert "not an image" in errors["broken.jpg"]
        assert "ConnectError" in errors["x.png"]
        row = store.client.query("imgs", filter='item_key == "p2"', output_fields=["*"])[0]
        assert row["image_path"] == f"{base}/img_002.png" and row["price"] == 2.5
        assert Path(row["local_path"]).is_file()  # cached copy for the reranker/grid
    # Second run works from the cache alone (server gone) and adds nothing.
    rep = _ingest(store, tiny_embedding, list(catalog_items(catalog)), cache=tmp_path / "cache")
    assert rep.unchanged == 4 and rep.added == 0


def _bad_inputs(folder: Path) -> dict[str, str]:
    """name -> expected substring of the error (None: must be indexed)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = make_image(1)
    good.save(folder / "good.png")
    (folder / "zero.jpg").write_bytes(b"")
    data = (folder / "good.png").read_bytes()
    good.save(folder / "full.jpg", quality=95)
    (folder / "truncated.jpg").write_bytes((folder / "full.jpg").read_bytes()[:600])
    (folder / "full.jpg").unlink()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("hello, I am text")
    Image.new("1", (12000, 12000)).save(folder / "bomb.png")  # 144M pixels, a few KB on disk
    frames = [make_image(i) for i in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("I;16", (64, 48), 4000).save(folder / "sixteen.png")
    make_image(2).convert("CMYK").save(folder / "cmyk.jpg")
    pal = make_image(3).convert("P")
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png", transparency=0)
    make_image(4).convert("LA").save(folder / "la.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    make_image(5).save(folder / "rotated.jpg", exif=exif)
    (folder / "with space é ü.png").write_bytes(data)
    os.symlink(folder / "nowhere.png", folder / "dangling.png")
    loop = folder / "loop"
    loop.mkdir()
    os.symlink(folder, loop / "back")  # a symlink loop: must not trap the walk
    return {
        "good.png": "",
        "anim.gif": "",
        "sixteen.png": "",
        "cmyk.jpg": "",
        "palette.png": "",
        "la.png": "",
        "rotated.jpg": "",
        "with space é ü.png": "",
        "zero.jpg": "empty file",
        "truncated.jpg": "truncated",
        "truncated.png": "truncated",
        "text.jpg": "not an image",
        "bomb.png": "dimensions too large",
        "dangling.png": "no such file",
    }


def test_bad_inputs_reported_good_ones_indexed(
    tmp_path: Path, milvus_uri: str, tiny_embedding: VisualizedBGEEmbedding
) -> None:
    folder = tmp_path / "bad"
    expected = _bad_inputs(folder)
    store = _store(milvus_uri, tiny_embedding)
    rep = _ingest(store, tiny_embedding, list(folder_items(folder)))
    failed = {Path(f["path"]).name: f["error"] for f in rep.failed}
    indexed = {Path(k).name for _, k in _rows(store)}
    for name, err in expected.items():
        if err:
            assert name in failed and err in failed[name], (name, failed.get(name))
            assert name not in indexed
        else:
            assert name in indexed, (name, failed.get(name))
    assert rep.added == sum(1 for e in expected.values() if not e)


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or folder"):
        list(items_for(tmp_path / "missing"))
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"image": "a.png"}\n{not json}\n')
    with pytest.raises(SourceError, match=r"c.jsonl:2: invalid JSON"):
        list(items_for(bad))
    bad.write_text('{"image": "file:///etc/passwd"}\n')
    with pytest.raises(SourceError, match="unsupported scheme"):
        list(items_for(bad))


_KILL_SCRIPT = """
import os, sys
from pathlib import Path
from ingestion.pipeline import Ingestor
from ingestion.sources import folder_items
from rag.embedding.multimodal import VisualizedBGEEmbedding
from rag.store.milvus import CatalogStore
uri, kit, folder, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
e = VisualizedBGEEmbedding.from_local(kit)
store = CatalogStore(uri=uri, collection="imgs", dim=e.dim, model_id=e.model_name)
def progress(done, total):
    if kill_at and done >= kill_at:
        os.kill(os.getpid(), 9)
items = list(folder_items(Path(folder)))
Ingestor(embedding=e, store=store, batch_size=3, progress=progress).run(items)
print("finished")
"""


def _run_killed(uri: str, kit: Path, folder: Path, kill_at: int) -> int:
    res = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, uri, str(kit), str(folder), str(kill_at)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return res.returncode


@pytest.mark.parametrize("kill_points", [(4,), pytest.param((2, 7, 11), marks=pytest.mark.slow)])
def test_kill_9_then_resume_equals_clean_run(
    tmp_path: Path,
    tiny_embed_dir: Path,
    tiny_embedding: VisualizedBGEEmbedding,
    kill_points: tuple[int, ...],
) -> None:
    folder = tmp_path / "cat"
    paths = write_images(folder, 14)
    clean_uri = str(tmp_path / "clean" / "m.db")
    assert _run_killed(clean_uri, tiny_embed_dir, folder, 0) == 0
    crash_uri = str(tmp_path / "crash" / "m.db")
    for i, point in enumerate(kill_points):
        if i == 1:
            make_image(500).save(paths[0])  # a change between crashes: replaced, not duplicated
            make_image(500).save(tmp_path / "tmp.png")
        assert _run_killed(crash_uri, tiny_embed_dir, folder, point) == -9
    assert _run_killed(crash_uri, tiny_embed_dir, folder, 0) == 0
    if len(kill_points) > 1:  # bring the clean run to the same content
        assert _run_killed(clean_uri, tiny_embed_dir, folder, 0) == 0
    clean = _store(clean_uri, tiny_embedding)
    crash = _store(crash_uri, tiny_embedding)
    assert _rows(crash) == _rows(clean) and crash.count() == 14
    clean.close()
    crash.close()


def test_cli_ingest_json_and_strict(tmp_path: Path, tiny_embed_dir: Path) -> None:
    folder = tmp_path / "cat"
    write_images(folder, 3)
    (folder / "bad.jpg").write_text("nope")
    env = {
        "MMSEARCH_MILVUS_URI": str(tmp_path / "db" / "m.db"),
        "MMSEARCH_EMBED_MODEL": str(tiny_embed_dir),
    }
    res = run_cli("ingest", str(folder), "--json", env=env)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["added"], data["unchanged"], data["replaced"]) == (3, 0, 0)
    assert data["failed"] == [
        {"path": str((folder / "bad.jpg").resolve()), "error": "not an image (unrecognised format)"}
    ]
    res = run_cli("ingest", str(folder), "--json", "--strict", env=env)
    assert res.returncode == 1 and json.loads(res.stdout)["unchanged"] == 3
    stats = json.loads(run_cli("stats", "--json", env=env).stdout)
    assert stats["rows"] == 3 and stats["dim"] == 32
    # Another model (a different random seed) must not be mixed into this collection.
    from rag.embedding.tiny import make_embed_dir

    other = make_embed_dir(tmp_path / "other", seed=1)
    res = run_cli("ingest", str(folder), env={**env, "MMSEARCH_EMBED_MODEL": str(other)})
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "seed0" in res.stderr and "seed1" in res.stderr and "MMSEARCH_COLLECTION" in res.stderr
    res = run_cli("ingest", str(tmp_path / "nope"), env=env)
    assert res.returncode == 1 and res.stderr.strip().startswith("error:")
    assert "no such file or folder" in res.stderr and "Traceback" not in res.stderr
