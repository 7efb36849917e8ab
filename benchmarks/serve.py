"""Load on `mmsearch serve`: N concurrent clients x M searches over loopback, each search
followed by the thumbnail fetches a page makes -> errors, p50/p95 latency, requests/s.

The server is the real command (`python -m rag.app.cli serve`) in its own process, on a
catalog of generated images ingested beforehand with the same model. The server's overhead is
measured paired: each query runs in-process straight through ``engine.search`` (on a copy of
the collection: Milvus Lite lets one process open a file) and then over HTTP, alternately, so
both see the same machine load (on a machine busy with other work the scheduler favours the
mostly idle server process, so run it on a quiet machine: the load average is recorded). A
/healthz probe during the load shows whether the event loop stays responsive while the model
works.

Knobs (environment): MMSEARCH_BENCH_SERVE_CLIENTS (8), MMSEARCH_BENCH_SERVE_SEARCHES (10 per
client), MMSEARCH_BENCH_SERVE_MODEL (``full``: full-size random weights, the real compute cost
of Visualized BGE base; ``tiny``: the test model, i.e. mostly server + Milvus overhead),
MMSEARCH_BENCH_SERVE_ROWS (60 catalog images).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import percentiles, write

REPO = Path(__file__).resolve().parent.parent


def _queries(images: list[Path]) -> list[dict[str, Any]]:
    """The mix: text, image and composed queries in turn (12 distinct ones)."""
    texts = ["red phone case", "a mug for tea", "running shoes", "something blue"]
    out: list[dict[str, Any]] = []
    for i in range(12):
        kind = ("text", "image", "composed")[i % 3]
        q: dict[str, Any] = {}
        if kind != "image":
            q["text"] = texts[i % len(texts)]
        if kind != "text":
            q["image"] = images[(7 * i) % len(images)]
        out.append(q)
    return out


def _catalog(root: Path, model_dir: Path, rows: int) -> list[Path]:
    from ingestion.service import ingest_items, list_items
    from rag.core.settings import Settings
    from tests.helpers import write_images

    images = write_images(root / "imgs", rows)
    s = Settings(milvus_uri=str(root / "milvus" / "serve.db"), embed_model=str(model_dir))
    ingest_items(s, list_items([str(root / "imgs")]))
    return images


def _paired(
    root: Path, model_dir: Path, base: str, queries: list[dict[str, Any]]
) -> dict[str, Any]:
    """Each query in-process (on a copy of the collection) and then over HTTP, alternately."""
    import httpx

    from rag.core.settings import Settings
    from rag.factory import build_query_engine

    s = Settings(
        milvus_uri=str(root / "milvus" / "direct.db"), embed_model=str(model_dir), rerank=False
    )
    engine = build_query_engine(s)
    direct, http = [], []
    try:
        with httpx.Client(base_url=base, timeout=300) as c:
            payloads = {q["image"]: q["image"].read_bytes() for q in queries if "image" in q}
            engine.search(text="warm up")
            for q in queries * 2:
                image = payloads[q["image"]] if "image" in q else None
                t0 = time.perf_counter()
                engine.search(text=q.get("text"), image=image)
                direct.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                resp = asyncio.run(_search_once(base, q, payloads))
                http.append(time.perf_counter() - t0)
                if resp != 200:
                    raise RuntimeError(f"search HTTP {resp}")
            c.get("/healthz")
    finally:
        engine.close()
    return {"direct_engine_search": percentiles(direct), "http_one_client": percentiles(http)}


async def _search_once(base: str, q: dict[str, Any], payloads: dict[Path, bytes]) -> int:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=300) as c:
        return int((await _search(c, q, payloads)).status_code)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(root: Path, model_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSEARCH_")}
    env.update(
        PYTHONPATH=str(REPO),
        MMSEARCH_MILVUS_URI=str(root / "milvus" / "serve.db"),
        MMSEARCH_EMBED_MODEL=str(model_dir),
        MMSEARCH_DATA_DIR=str(root / "data"),
        MMSEARCH_RERANK="false",
    )
    cmd = [sys.executable, "-m", "rag.app.cli", "serve", "--port", str(port)]
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)


async def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base, timeout=2) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                if (await c.get("/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the server did not come up")


async def _search(c: Any, q: dict[str, Any], payloads: dict[Path, bytes]) -> Any:
    data = {"text": q["text"]} if "text" in q else {}
    if "image" in q:
        files = {"image": (q["image"].name, payloads[q["image"]], "image/png")}
        return await c.post("/api/search", data=data, files=files)
    return await c.post("/api/search", json=data)


async def _client(
    base: str, queries: list[dict[str, Any]], start: int, m: int, log: dict[str, list[Any]]
) -> None:
    import httpx

    payloads = {q["image"]: q["image"].read_bytes() for q in queries if "image" in q}
    async with httpx.AsyncClient(base_url=base, timeout=300) as c:
        for i in range(m):
            q = queries[(start + i) % len(queries)]
            t0 = time.perf_counter()
            resp = await _search(c, q, payloads)
            log["search"].append(time.perf_counter() - t0)
            if resp.status_code != 200:
                log["errors"].append(f"search HTTP {resp.status_code}: {resp.text[:200]}")
                continue
            t0 = time.perf_counter()
            thumbs = await asyncio.gather(*(c.get(r["thumb_url"]) for r in resp.json()["results"]))
            log["thumbs"].append(time.perf_counter() - t0)
            log["errors"] += [f"thumb HTTP {t.status_code}" for t in thumbs if t.status_code != 200]
            log["requests"].append(1 + len(thumbs))


async def _probe_health(base: str, stop: asyncio.Event, log: dict[str, list[Any]]) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            resp = await c.get("/healthz")
            log["healthz"].append(time.perf_counter() - t0)
            if resp.status_code != 200:
                log["errors"].append(f"healthz HTTP {resp.status_code}")
            await asyncio.sleep(0.1)


async def _load(base: str, queries: list[dict[str, Any]], n: int, m: int) -> dict[str, Any]:
    log: dict[str, list[Any]] = {"search": [], "thumbs": [], "errors": [], "requests": []}
    log["healthz"] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(_probe_health(base, stop, log))
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(base, queries, k * 5, m, log) for k in range(n)))
    wall = time.perf_counter() - t0
    stop.set()
    await probe
    return {
        "clients": n,
        "searches_per_client": m,
        "searches": len(log["search"]),
        "requests": sum(log["requests"]) + len(log["errors"]),
        "errors": len(log["errors"]),
        "error_samples": log["errors"][:5],
        "wall_s": wall,
        "searches_per_s": len(log["search"]) / wall,
        "requests_per_s": (sum(log["requests"]) + len(log["errors"])) / wall,
        "search_latency": percentiles(log["search"]),
        "thumbs_latency_per_page": percentiles(log["thumbs"]) if log["thumbs"] else None,
        "healthz_latency_under_load": percentiles(log["healthz"]) if log["healthz"] else None,
    }


def run(clients: int | None = None, searches: int | None = None) -> Path:
    from rag.embedding.tiny import make_embed_dir

    n = clients or int(os.environ.get("MMSEARCH_BENCH_SERVE_CLIENTS", "8"))
    m = searches or int(os.environ.get("MMSEARCH_BENCH_SERVE_SEARCHES", "10"))
    model = os.environ.get("MMSEARCH_BENCH_SERVE_MODEL", "full")
    rows = int(os.environ.get("MMSEARCH_BENCH_SERVE_ROWS", "60"))
    # Other work on the machine moves every number here (see the module docstring).
    load_at_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = make_embed_dir(root / "model", full_size=model == "full")
        images = _catalog(root, model_dir, rows)
        shutil.copytree(root / "milvus" / "serve.db", root / "milvus" / "direct.db")
        queries = _queries(images)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        proc = _start_server(root, model_dir, port)
        try:
            asyncio.run(_wait_ready(base, proc))
            asyncio.run(_load(base, queries, 1, 2))  # warm up: first calls, thumbnail cache
            paired = _paired(root, model_dir, base, queries)
            single = asyncio.run(_load(base, queries, 1, len(queries) * 2))
            loaded = asyncio.run(_load(base, queries, n, m))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            log_tail = (root / "server.log").read_text(errors="replace")[-2000:]
    result = {
        "model": model,
        "rows": rows,
        "query_mix": "text, image upload, image+text in turn; rerank off",
        "paired": paired,
        "one_client": single,
        "concurrent": loaded,
        "ratio_http_p50_vs_direct_p50_paired": (
            paired["http_one_client"]["p50_ms"] / paired["direct_engine_search"]["p50_ms"]
        ),
        "ratio_concurrent_searches_per_s_vs_one_client": (
            loaded["searches_per_s"] / single["searches_per_s"]
        ),
        "server_exit_code": proc.returncode,
        "load_avg_1m_at_start": load_at_start,
    }
    if loaded["errors"] or single["errors"]:
        result["server_log_tail"] = log_tail
    print(json.dumps({k: result[k] for k in ("concurrent",)}, indent=1, default=str)[:1500])
    return write("serve", result)


if __name__ == "__main__":
    run()
