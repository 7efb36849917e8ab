"""Faults and hostile input: URLs, secrets, odd names, locks, a collection dropped underneath."""

import http.server
import json
import os
import threading
import time
from pathlib import Path

import pytest

from rag.core.fetch import fetch
from rag.core.settings import Settings
from rag.errors import InputImageError, StoreError
from rag.factory import build_query_engine
from rag.store.milvus import CatalogStore
from tests.conftest import run_cli
from tests.helpers import lite_lock_held, make_image, write_images


class _Hostile(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/big":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\xff\xd8\xff" + b"0" * 300_000)  # no content-length: streamed
        elif self.path == "/file-redirect":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
        elif self.path == "/slow":
            time.sleep(3)
            self.send_response(200)
            self.end_headers()
        elif self.path == "/flaky":
            type(self).hits += 1
            if type(self).hits < 2:
                self.send_response(503)
                self.end_headers()
                return
            data = type(self).png
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    hits = 0
    png = b""

    def log_message(self, *a):
        pass


@pytest.fixture
def hostile(tmp_path: Path):
    make_image(1).save(tmp_path / "p.png")
    _Hostile.png = (tmp_path / "p.png").read_bytes()
    _Hostile.hits = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_limits(hostile: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    trusted = {"allow_private": True}  # the hostile server is on loopback
    with pytest.raises(InputImageError, match="too large"):
        fetch(f"{hostile}/big", cache, max_bytes=100_000, **trusted)
    with pytest.raises(InputImageError, match="non-http"):
        fetch(f"{hostile}/file-redirect", cache, **trusted)
    with pytest.raises(InputImageError, match="timed out"):
        fetch(f"{hostile}/slow", cache, timeout_s=0.5, retries=0, **trusted)
    with pytest.raises(InputImageError, match="only http"):
        fetch("file:///etc/passwd", cache)
    assert fetch(f"{hostile}/flaky", cache, retries=2, **trusted).read_bytes() == _Hostile.png
    assert not [p for p in cache.iterdir() if p.name.startswith(".part-")]  # no half files


def test_secrets_never_printed(tmp_path: Path, milvus_uri: str) -> None:
    CatalogStore(uri=milvus_uri, collection="mmsearch_images", dim=4, model_id="m").close()
    env = {
        "MMSEARCH_MILVUS_URI": milvus_uri,
        "MMSEARCH_MILVUS_TOKEN": "tok-SUPERSECRET",
        "MMSEARCH_VLM_API_KEY": "sk-SUPERSECRET",
    }
    for args in (("stats", "--json"), ("-v", "stats")):
        res = run_cli(*args, env=env)
        assert res.returncode == 0, res.stderr
        assert "SUPERSECRET" not in res.stdout + res.stderr
    bad = run_cli("stats", env={**env, "MMSEARCH_MILVUS_URI": "http://127.0.0.1:1"})
    assert bad.returncode == 1 and "SUPERSECRET" not in bad.stdout + bad.stderr
    assert "SUPERSECRET" not in repr(Settings(milvus_token="tok-SUPERSECRET"))


def test_odd_file_names_and_permissions(tmp_path: Path, tiny_embed_dir: Path) -> None:
    folder = tmp_path / "odd"
    write_images(folder, 1)
    data = (folder / "img_000.png").read_bytes()
    (folder / "with space.png").write_bytes(data)
    raw = os.fsencode(folder) + b"/caf\xe9.png"  # not UTF-8
    with open(raw, "wb") as fh:
        fh.write(data)
    locked = folder / "locked.png"
    locked.write_bytes(data)
    locked.chmod(0)
    env = {
        "MMSEARCH_MILVUS_URI": str(tmp_path / "db" / "m.db"),
        "MMSEARCH_EMBED_MODEL": str(tiny_embed_dir),
    }
    res = run_cli("ingest", str(folder), "--json", env=env)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["added"] >= 3 and report["added"] + len(report["failed"]) == 4
    assert {
        "path": str(folder.resolve() / "caf\\xe9.png"),
        "error": "file name is not valid UTF-8; rename the file",
    } in report["failed"]
    if os.geteuid() != 0:  # root reads anything; otherwise the locked file is reported
        assert any("permission denied" in f["error"] for f in report["failed"])


def test_collection_dropped_underneath(catalog, tiny_embedding) -> None:
    store, _, _ = catalog
    engine = build_query_engine(Settings(rerank=False), embedding=tiny_embedding, store=store)
    assert engine.search(text="x").results
    store.client.drop_collection(store.collection)
    with pytest.raises(StoreError, match="search in collection 'mmsearch_images' failed"):
        engine.search(text="x")


def test_second_process_gets_clear_error_not_hang(catalog, tiny_embed_dir, milvus_uri) -> None:
    store, folder, _ = catalog
    store.close()
    env = {"MMSEARCH_MILVUS_URI": milvus_uri, "MMSEARCH_EMBED_MODEL": str(tiny_embed_dir)}
    with lite_lock_held(milvus_uri):
        for args in (("search", "red", "--no-rerank"), ("ingest", str(folder)), ("stats",)):
            t0 = time.monotonic()
            res = run_cli(*args, env=env, timeout=120)
            assert res.returncode == 1, res.stderr
            assert "another process has the Milvus Lite database" in res.stderr
            assert len(res.stderr.strip().splitlines()) == 1
            assert time.monotonic() - t0 < 60
