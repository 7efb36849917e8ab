"""`mmsearch serve`: the HTTP API on a real uvicorn server on a loopback port, over tiny
random-weight models and Milvus Lite in a temp folder (one engine for the whole module; a few
apps with different configurations share it)."""

from __future__ import annotations

import http.client
import io
import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from rag.app.server import ServerConfig, background_server, create_app
from rag.app.server.errors import INTERNAL
from rag.core.settings import Settings
from rag.factory import build_query_engine
from rag.rerank.postprocessor import VLMReranker
from tests.conftest import run_cli
from tests.helpers import http_server, make_image, write_images

KEY = "test-key-0123456789"
CAP = 1024 * 1024
CLI_KEYS = {"query", "results", "caption", "reason", "rerank", "timings"}


def _catalog(root: Path, n: int) -> tuple[Path, list[Path]]:
    paths = write_images(root / "imgs", n)
    rows = [
        {
            "id": f"sku-{i}",
            "image": str(p),
            "title": f"Product {i}",
            "category": "cases" if i % 2 else "shoes",
            "price": float(5 * i),
        }
        for i, p in enumerate(paths)
    ]
    cat = root / "catalog.jsonl"
    cat.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return cat, paths


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_embedding, tiny_vlm) -> Iterator[Any]:
    """The engine (12 rows, tiny VLM reranker, rerank off by default) and its files."""
    from ingestion.pipeline import Ingestor
    from ingestion.sources import catalog_items
    from rag.store.milvus import CatalogStore

    root = tmp_path_factory.mktemp("serve")
    cat, paths = _catalog(root, 12)
    store = CatalogStore(
        uri=str(root / "milvus" / "serve.db"),
        collection="mmsearch_images",
        dim=tiny_embedding.dim,
        model_id=tiny_embedding.model_name,
    )
    Ingestor(embedding=tiny_embedding, store=store, batch_size=6).run(list(catalog_items(cat)))
    settings = Settings(data_dir=root / "data", embed_batch_size=4)
    engine = build_query_engine(
        settings,
        embedding=tiny_embedding,
        store=store,
        reranker=VLMReranker(vlm=tiny_vlm, with_reason=True),
        rerank=False,
    )

    ids = {str(p): _row_id(store, f"sku-{i}") for i, p in enumerate(paths)}
    yield SimpleNamespace(
        root=root, paths=paths, engine=engine, settings=settings, store=store, ids=ids
    )
    store.close()


def _row_id(store: Any, key: str) -> str:
    rows = store.client.query(store.collection, filter=f'item_key == "{key}"', output_fields=["id"])
    return str(rows[0]["id"])


def _serve(world: Any, **config: Any) -> Any:
    cfg = ServerConfig(thumb_dir=world.root / "thumbs", max_upload_bytes=CAP, **config)
    return background_server(create_app(world.engine, cfg, settings=world.settings))


@pytest.fixture(scope="module")
def api(world: Any) -> Iterator[httpx.Client]:
    """The default server: loopback use, SSRF guard on, a key (for ingest)."""
    with (
        _serve(world, api_key=SecretStr(KEY)) as base,
        httpx.Client(base_url=base, timeout=120) as client,
    ):
        yield client


def _error(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"]
    return str(body["error"])


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    make_image(seed).save(buf, format="PNG")
    return buf.getvalue()


# -- search ------------------------------------------------------------------------------
def test_search_by_text_matches_the_cli_json(api: httpx.Client, world: Any) -> None:
    resp = api.post("/api/search", json={"text": "red shoes", "top_k": 5})
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert set(data) == CLI_KEYS
    # a titled catalog has a text index: a text-only query defaults to hybrid
    assert data["query"] == {
        "text": "red shoes", "image": None, "kind": "text", "mode": "hybrid", "top_k": 5
    }  # fmt: skip
    direct = world.engine.search(text="red shoes", top_k=5).to_dict()
    assert [r["id"] for r in data["results"]] == [r["id"] for r in direct["results"]]
    for got, want in zip(data["results"], direct["results"], strict=True):
        assert "image_path" not in got
        assert got["image_url"] == f"/api/images/{got['id']}"
        assert got["thumb_url"] == f"/api/images/{got['id']}/thumb"
        want.pop("image_path")
        assert {k: got[k] for k in want} == want  # every other key as the CLI has it
        assert got["title"].startswith("Product ") and isinstance(got["price"], float)
    assert data["rerank"] == {"status": "skipped", "detail": "rerank disabled"}


def test_search_by_upload_finds_the_same_image(api: httpx.Client, world: Any) -> None:
    path = world.paths[3]
    files = {"image": ("img_003.png", path.read_bytes(), "image/png")}
    data = api.post("/api/search", files=files).json()
    assert data["query"]["kind"] == "image" and data["query"]["image"] == "upload 'img_003.png'"
    assert data["results"][0]["id"] == world.ids[str(path)]
    assert data["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_search_by_url_only_with_the_opt_in(world: Any) -> None:
    served = world.root / "www"
    served.mkdir()
    (served / "img_005.png").write_bytes(world.paths[5].read_bytes())
    with http_server(served) as images:
        url = f"{images}/img_005.png"
        with _serve(world) as base:  # default: the SSRF guard refuses loopback
            err = _error(httpx.post(f"{base}/api/search", json={"image_url": url}), 400)
            assert "loopback" in err and "MMSEARCH_ALLOW_PRIVATE_URLS" in err
        with _serve(world, allow_private_urls=True) as base:  # the test's explicit opt-in
            resp = httpx.post(f"{base}/api/search", json={"image_url": url}, timeout=60)
            assert resp.status_code == 200, resp.text
            data = resp.json()
    assert data["query"]["image"] == url and data["query"]["kind"] == "image"
    assert data["results"][0]["id"] == world.ids[str(world.paths[5])]


def test_composed_search_with_filters_and_rerank(api: httpx.Client, world: Any) -> None:
    files = {"image": ("q.png", world.paths[2].read_bytes(), "image/png")}
    form = {"text": "a case like this", "filters": ["category=cases", "price<40"], "top_k": "4"}
    data = api.post("/api/search", data={**form, "rerank": "true"}, files=files).json()
    assert data["query"]["kind"] == "composed" and data["query"]["top_k"] == 4
    assert data["results"] and all(r["category"] == "cases" for r in data["results"])
    assert all(r["price"] < 40 for r in data["results"])
    assert data["rerank"]["status"] in ("ok", "repaired")  # the tiny VLM really ranked
    assert sorted(r["retrieval_rank"] for r in data["results"]) == [1, 2, 3, 4]
    assert data["caption"] is not None and "rerank_s" in data["timings"]


def test_more_like_this_by_image_id(api: httpx.Client, world: Any) -> None:
    row = world.ids[str(world.paths[7])]
    data = api.post("/api/search", data={"image_id": row}).json()
    assert data["query"]["image"] == f"image_id {row}" and data["results"][0]["id"] == row
    composed = api.post("/api/search", json={"text": "like this", "image_id": row}).json()
    assert composed["query"]["kind"] == "composed"


# -- images ------------------------------------------------------------------------------
def test_image_and_thumbnail_endpoints(api: httpx.Client, world: Any) -> None:
    path = world.paths[4]
    row = world.ids[str(path)]
    original = api.get(f"/api/images/{row}")
    assert original.status_code == 200 and original.headers["content-type"] == "image/png"
    assert original.content == path.read_bytes()
    thumb = api.get(f"/api/images/{row}/thumb")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(thumb.content))
    assert img.format == "JPEG" and max(img.size) <= 256
    cached = world.root / "thumbs" / f"{row}-256.jpg"
    assert cached.read_bytes() == thumb.content  # cached on disk, served again from there
    assert api.get(f"/api/images/{row}/thumb").content == thumb.content


def _raw_get(base: str, path: str) -> tuple[int, bytes]:
    """A GET with the path sent byte for byte (httpx would normalise dot segments)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_unknown_ids_and_traversal_get_404(
    api: httpx.Client, world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "no image with id" in _error(api.get("/api/images/0123456789abcdef"), 404)
    assert "no image" in _error(api.get("/api/images/0123456789abcdef/thumb"), 404)
    base = str(api.base_url).rstrip("/")
    secret = world.root / "secret.txt"
    secret.write_text("TOP-SECRET")
    for path in (
        "/api/images/../../../../etc/passwd",
        "/api/images/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd/thumb",
        f"/api/images/{str(secret).replace('/', '%2F')}",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2f..%2fapp.py",
    ):
        status, body = _raw_get(base, path)
        assert status == 404, (path, status)
        assert b"root:" not in body and b"TOP-SECRET" not in body and b"import" not in body
        assert "error" in json.loads(body), path
    assert "no image" in _error(api.post("/api/search", json={"image_id": "../etc/passwd"}), 404)
    # Files that are no row's image: by a name relative to the server's working directory,
    # or by an absolute path as a "more like this" id.
    private = world.root / "private.png"
    make_image(99).save(private)
    monkeypatch.chdir(world.root)
    for path in ("/api/images/secret.txt", "/api/images/private.png/thumb"):
        _error(api.get(path), 404)
    _error(api.post("/api/search", json={"image_id": str(private)[:64]}), 404)


# -- bad input ---------------------------------------------------------------------------
def test_oversized_uploads_get_413(api: httpx.Client) -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"0" * (CAP + 10)
    err = _error(api.post("/api/search", files={"image": ("big.png", big, "image/png")}), 413)
    assert "MMSEARCH_MAX_UPLOAD_MB" in err

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="b.png"\r\n\r\n'
        for _ in range(20):
            yield b"0" * 65536
        yield b"\r\n--b--\r\n"

    resp = api.post(
        "/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert "content-length" not in resp.request.headers
    _error(resp, 413)
    # Any body, not only uploads: refused before it is read whole.
    huge = b'{"text": "' + b"a" * (CAP + 10) + b'"}'
    headers = {"content-type": "application/json"}
    _error(api.post("/api/search", content=huge, headers=headers), 413)
    _error(api.post("/api/search", content=iter([huge[:CAP], huge[CAP:]]), headers=headers), 413)
    assert api.get("/healthz").json() == {"status": "ok"}  # still serving


def _bomb_png(side: int) -> bytes:
    """A small PNG whose header claims side x side pixels."""
    raw = zlib.compress(b"\x00" * (side // 8 + 1) * 8)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_bad_images_get_4xx_json(api: httpx.Client) -> None:
    def upload(name: str, data: bytes) -> str:
        return _error(api.post("/api/search", files={"image": (name, data, "image/png")}), 400)

    assert "not an image" in upload("notes.txt", b"hello, not an image")
    assert "truncated" in upload("cut.png", _png(1)[:300])
    assert "too large" in upload("bomb.png", _bomb_png(20_000))
    assert "empty" in upload("empty.png", b"")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://10.1.2.3/cat.png", "private"),
        ("http://192.168.0.10/cat.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]:9/cat.png", "loopback"),
        ("http://[::ffff:127.0.0.1]/cat.png", "loopback"),
        ("http://localhost:9/cat.png", "loopback"),
        ("http://0.0.0.0:9/cat.png", "unspecified"),
        ("file:///etc/passwd", "only http(s)"),
    ],
)
def test_private_address_urls_are_refused(api: httpx.Client, url: str, says: str) -> None:
    assert says in _error(api.post("/api/search", json={"image_url": url}), 400)


def test_request_errors_are_one_line_json(api: httpx.Client) -> None:
    assert "empty query" in _error(api.post("/api/search", json={}), 400)
    assert "top_k" in _error(api.post("/api/search", json={"text": "x", "top_k": 0}), 422)
    assert "at most" in _error(api.post("/api/search", json={"text": "x", "top_k": 5000}), 400)
    assert "mode" in _error(api.post("/api/search", json={"text": "x", "mode": "fuzzy"}), 422)
    # keyword search needs words: an image alone is a 400 naming the mode
    image_only = {"image": ("a.png", _png(1), "image/png")}
    keyword = _error(api.post("/api/search", files=image_only, data={"mode": "keyword"}), 400)
    assert "keyword" in keyword
    _error(
        api.post("/api/search", content=b"{not json", headers={"content-type": "application/json"}),
        422,
    )  # noqa: E501
    assert "unsupported content type" in _error(api.post("/api/search", content=b"x"), 400)
    assert "unknown field" in _error(api.post("/api/search", data={"txt": "x"}), 400)
    assert "filter" in _error(api.post("/api/search", json={"text": "x", "filters": ["?"]}), 400)
    one = {"image": ("a.png", _png(1), "image/png")}
    both = api.post("/api/search", data={"image_url": "https://example.com/a.png"}, files=one)
    assert "one query image" in _error(both, 400)
    assert "not found" in _error(api.get("/nope"), 404)
    assert "not allowed" in _error(api.get("/api/search"), 405)


def test_an_unexpected_failure_is_a_generic_500(world: Any) -> None:
    class Broken:
        store = world.store
        retriever = world.engine.retriever
        rerank_default = False

        def search(self, **kwargs: Any) -> Any:
            raise RuntimeError("secret internal detail /etc/app.conf")

    app = create_app(Broken(), ServerConfig(thumb_dir=world.root / "thumbs"))  # type: ignore[arg-type]
    with background_server(app) as base:
        resp = httpx.post(f"{base}/api/search", json={"text": "x"})
    assert _error(resp, 500) == INTERNAL


# -- service, key, ingest ------------------------------------------------------------------
def test_stats_health_docs_and_page(api: httpx.Client, world: Any) -> None:
    stats = api.get("/api/stats").json()
    assert (
        stats["rows"] == world.store.count()
        and stats["dim"] == world.engine.retriever.embedding.dim
    )
    assert api.get("/healthz").json() == {"status": "ok"}
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/images/{row_id}", "/api/ingest", "/api/stats"} <= set(paths)
    assert "multipart/form-data" in paths["/api/search"]["post"]["requestBody"]["content"]
    assert api.get("/docs").status_code == 200
    page = api.get("/")
    assert (
        page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    )
    assert 'id="search-form"' in page.text and "/static/app.js" in page.text
    assert api.get("/static/app.js").status_code == 200


def test_api_key_is_enforced(api: httpx.Client, world: Any) -> None:
    body = {"path": str(world.root / "imgs")}
    assert "API key" in _error(api.post("/api/ingest", json=body), 401)
    assert _error(api.post("/api/ingest", json=body, headers={"X-API-Key": "nope"}), 401)
    assert _error(api.get("/api/ingest/whatever"), 401)
    # A server without a key has no ingest over HTTP at all.
    with _serve(world) as base:
        err = _error(httpx.post(f"{base}/api/ingest", json=body, headers={"X-API-Key": "x"}), 401)
        assert "MMSEARCH_API_KEY" in err
    # Bound beyond loopback: all of /api needs the key; the health check does not.
    with _serve(world, api_key=SecretStr(KEY), key_for_all_api=True) as base:
        for method, path in (("POST", "/api/search"), ("GET", "/api/stats")):
            _error(httpx.request(method, f"{base}{path}", json={"text": "x"}), 401)
        ok = httpx.post(
            f"{base}/api/search",
            json={"text": "x"},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        )
        assert ok.status_code == 200
        assert httpx.get(f"{base}/api/stats", headers={"X-API-Key": KEY}).status_code == 200
        assert httpx.get(f"{base}/healthz").status_code == 200
        page = httpx.get(f"{base}/")
        assert '"keyRequired": true' in page.text.replace("&quot;", '"')


def _wait(api: httpx.Client, job: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = api.get(f"/api/ingest/{job}", headers={"X-API-Key": KEY}).json()
        if data["status"] in ("done", "failed"):
            return dict(data)
        time.sleep(0.2)
    raise AssertionError(f"ingest job {job} did not finish")


def test_ingest_jobs_run_and_report(api: httpx.Client, world: Any) -> None:
    auth = {"X-API-Key": KEY}
    before = world.store.count()
    folder = world.root / "more"
    new = write_images(folder, 3, start=40)
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    resp = api.post("/api/ingest", json={"path": str(folder)}, headers=auth)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["status"] in ("queued", "running") and job["items"] == 4
    done = _wait(api, job["job"])
    assert done["status"] == "done", done
    assert done["report"]["added"] == 3 and len(done["report"]["failed"]) == 1
    assert done["done"] == done["total"] == 4 and done["rows"] == before + 3
    found = api.post("/api/search", files={"image": ("q.png", new[1].read_bytes(), "image/png")})
    assert found.json()["results"][0]["item_key"] == str(new[1].resolve())
    # An uploaded JSONL (absolute image paths) ingests too; a bad path fails at once.
    more = write_images(world.root / "more2", 2, start=50)
    jsonl = "\n".join(json.dumps({"id": f"up-{i}", "image": str(p)}) for i, p in enumerate(more))
    files = {"catalog": ("new.jsonl", jsonl.encode(), "application/json")}
    up = api.post("/api/ingest", files=files, headers=auth)
    assert up.status_code == 202, up.text
    done = _wait(api, up.json()["job"])
    assert done["status"] == "done" and done["report"]["added"] == 2
    assert done["source"] == "upload:new.jsonl" and done["rows"] == before + 5
    assert "no such file" in _error(
        api.post("/api/ingest", json={"path": "/nope"}, headers=auth), 400
    )
    assert "no ingest job" in _error(api.get("/api/ingest/0000", headers=auth), 404)


def test_concurrent_searches_are_all_answered(api: httpx.Client, world: Any) -> None:
    """Many clients at once, rerank on (the VLM serialised): no errors, stable answers."""
    base = str(api.base_url).rstrip("/")
    expected = api.post("/api/search", json={"text": "blue", "top_k": 3}).json()["results"]
    results: list[Any] = []

    def client(n: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as c:
            if n % 3 == 0:
                files = {"image": ("q.png", world.paths[n % 12].read_bytes(), "image/png")}
                r = c.post("/api/search", data={"text": "like this", "rerank": "true"}, files=files)
            else:
                r = c.post("/api/search", json={"text": "blue", "top_k": 3})
            results.append((n, r.status_code, r.json()))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(results) == 12 and all(status == 200 for _, status, _ in results), results
    for n, _, data in results:
        if n % 3:
            assert [r["id"] for r in data["results"]] == [r["id"] for r in expected]
        else:
            assert data["rerank"]["status"] in ("ok", "repaired")


# -- the command -------------------------------------------------------------------------
def test_the_serve_command_holds_the_index_and_stops_cleanly(
    tmp_path: Path, tiny_embed_dir: Path
) -> None:
    """`mmsearch serve` on an empty, new collection: ingest over the API, search, Ctrl-C; the
    Milvus Lite file is held while it runs and free afterwards."""
    import os
    import signal
    import socket
    import subprocess

    from rag.errors import StoreLockedError
    from rag.store.milvus import CatalogStore
    from tests.conftest import MMSEARCH, REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = str(tmp_path / "data" / "cli.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSEARCH_")}
    env.update(
        PYTHONPATH=str(REPO),
        MMSEARCH_EMBED_MODEL=str(tiny_embed_dir),
        MMSEARCH_MILVUS_URI=uri,
        MMSEARCH_DATA_DIR=str(tmp_path / "data"),
        MMSEARCH_API_KEY=KEY,
    )
    images = write_images(tmp_path / "photos", 4)
    proc = subprocess.Popen(
        [*MMSEARCH, "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()[0]
        with httpx.Client(base_url=base, timeout=60) as c:
            assert "is empty" in _error(c.post("/api/search", json={"text": "x"}), 409)
            with pytest.raises(StoreLockedError):  # the server process holds the Lite file
                CatalogStore(uri=uri, collection="mmsearch_images", create=False)
            job = c.post(
                "/api/ingest", json={"path": str(tmp_path / "photos")}, headers={"X-API-Key": KEY}
            ).json()
            done = _wait(c, job["job"])
            assert done["status"] == "done" and done["rows"] == 4
            files = {"image": ("q.png", images[2].read_bytes(), "image/png")}
            top = c.post("/api/search", files=files).json()["results"][0]
            assert top["item_key"] == str(images[2].resolve())
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert "Traceback" not in out and f"serving http://127.0.0.1:{port}" in out
    CatalogStore(uri=uri, collection="mmsearch_images", create=False).close()  # free again


def test_serve_refuses_a_public_bind_without_a_key(tmp_path: Path) -> None:
    res = run_cli("serve", "--host", "0.0.0.0", "--port", "9", cwd=tmp_path, timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith("error: binding 0.0.0.0") and "MMSEARCH_API_KEY" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_search_modes_pass_through(api: httpx.Client, world: Any) -> None:
    """keyword / hybrid reach the engine: the same ids and the resolved mode as in-process."""
    for mode in ("dense", "keyword", "hybrid"):
        resp = api.post("/api/search", json={"text": "Product 7", "top_k": 3, "mode": mode})
        assert resp.status_code == 200, resp.text
        data = resp.json()
        assert data["query"]["mode"] == mode
        direct = world.engine.search(text="Product 7", top_k=3, mode=mode)
        assert [r["id"] for r in data["results"]] == [r["id"] for r in direct.results]
    assert (
        api.post("/api/search", json={"text": "Product 7", "top_k": 1, "mode": "keyword"}).json()[
            "results"
        ][0]["title"]
        == "Product 7"
    )
