"""Where the embedded Milvus stops being enough: insert rate, top-9 latency and recall@9 at
growing collection sizes, per engine and index.

Engines and indexes:

* ``lite``: Milvus Lite 3.x, the default (pure Python, in-process), FLAT and HNSW (M 16,
  efConstruction 200, ef 64), on the product's own collection (``CatalogStore``).
* ``cpp``: C++ Milvus from milvus-lite 2.5.1 (a local-mode server over a unix socket,
  tests/cpp_milvus.py), FLAT. Its local mode refuses HNSW and nullable fields, so it gets the
  same rows in a collection without the nullable scalar fields.

Rows are synthetic 768-d unit vectors with the low intrinsic dimension of real embeddings
(see ``_embeddings``); recall@9 is against the exact top 9 from numpy. Latency is measured
twice: right after the ingest (insert + flush), and at steady state, after the engine's
background work is done (Milvus Lite compacts and builds HNSW per segment in a background
thread after a flush). For Milvus Lite the benchmark also records the latency while it settles,
where a steady-state search spends its time (cProfile of the engine's search call) and the
HNSW ``ef`` trade-off.

``MMSEARCH_BENCH_ROWS`` sets the sizes (default ``10000,100000``; add ``1000000`` for the opt-in
1M run, ~3 GB of vectors per engine).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import wait
from pathlib import Path
from typing import Any

from benchmarks.common import percentiles, write

DIM = 768
TOP_K = 9
QUERIES = 50
BATCH = 1000
SETTLE_TIMEOUT_S = 1800.0
HNSW = {"M": 16, "efConstruction": 200}
LATENT_DIM = 32
NOISE_SHARE = 0.1


def _embeddings(rng: Any, mixing: Any, n: int) -> Any:
    """Unit vectors with the low intrinsic dimension of real embeddings: a 32-d Gaussian
    through a fixed random linear map to 768-d, plus isotropic noise carrying ~10 % of the
    variance. Top-1 cosine to a query ~0.56, the median ~0 (at 10k). Uniform random vectors
    (no structure at all) are no stand-in: faiss HNSW reaches recall@9 0.35 on them at 10k."""
    import numpy as np

    x = 0.0
    for start in range(0, n, 100_000):  # chunks bound the peak memory at 1M rows
        m = min(100_000, n - start)
        part = rng.randn(m, LATENT_DIM).astype("float32") @ mixing.T
        part += rng.randn(m, DIM).astype("float32") * np.sqrt(NOISE_SHARE * (part**2).mean())
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        x = part if start == 0 else np.concatenate([x, part])
    return x


def _exact_top(vecs: Any, queries: Any) -> list[set[str]]:
    import numpy as np

    out = []
    for start in range(0, len(queries), 10):
        scores = queries[start : start + 10] @ vecs.T
        top = np.argpartition(-scores, TOP_K, axis=1)[:, :TOP_K]
        out += [{str(i) for i in row} for row in top]
    return out


def _measure(search: Callable[[list[float]], list[str]], queries: Any, truth: list[set[str]]):
    lat, recall = [], []
    for q, want in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        ids = search(q.tolist())
        lat.append(time.perf_counter() - t0)
        recall.append(len(set(ids) & want) / TOP_K)
    return {**percentiles(lat), "recall_at_9": sum(recall) / len(recall)}


def _insert(insert: Callable[[list[dict[str, Any]]], Any], vecs: Any) -> float:
    t0 = time.perf_counter()
    for s in range(0, len(vecs), BATCH):
        insert(
            [
                {"id": str(i), "item_key": str(i), "embedding": vecs[i].tolist()}
                for i in range(s, min(s + BATCH, len(vecs)))
            ]
        )
    return time.perf_counter() - t0


# -- Milvus Lite ------------------------------------------------------------------------------
def _lite_collection(store: Any) -> Any:
    """The engine object behind the in-process server (to know when background work is done
    and to profile a search without gRPC); None if this milvus-lite has other internals."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return None
    for path, entry in server_manager_instance._servers.items():
        if Path(path) == Path(store.uri).resolve():
            return entry[1].get_collection(store.collection)
    return None


def _profile(coll: Any, queries: Any) -> dict[str, Any]:
    """Where a steady-state engine search spends its time (cProfile, cumulative seconds per
    part over the engine's ``Collection.search``; cProfile inflates pure-Python code, so the
    Python share is an upper bound)."""
    prof = cProfile.Profile()
    prof.enable()
    for q in queries[:20]:
        coll.search([q.tolist()], top_k=TOP_K, metric_type="IP", anns_field="embedding")
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]

    def cum(file_part: str, fn: str) -> float:
        return sum(v[3] for (path, _, name), v in stats.items() if name == fn and file_part in path)

    total = cum("engine/collection.py", "search")
    loops = cum("executor_indexed.py", "_build_local_mask") + cum(
        "executor_indexed.py", "_update_max_seqs"
    )
    index = cum("milvus_lite/index/", "search")
    return {
        "profiled_searches": 20,
        "share_per_row_python_loops": round(loops / total, 3) if total else None,
        "share_vector_index_search": round(index / total, 3) if total else None,
        "what": "per-row loops = the engine's dedup (newest version of each primary key) and "
        "tombstone masks, a Python loop over every stored row on every search",
    }


def _lite_case(root: Path, n: int, index: str, vecs: Any, queries: Any, truth: Any) -> dict:
    from rag.store.milvus import CatalogStore

    store = CatalogStore(
        uri=str(root / f"lite-{index}-{n}.db"),
        collection="scale",
        dim=DIM,
        model_id="synthetic",
        index_type=index,
        hnsw_m=HNSW["M"],
        hnsw_ef_construction=HNSW["efConstruction"],
    )
    try:
        insert_s = _insert(lambda rows: store.client.insert("scale", rows), vecs)
        t0 = time.perf_counter()
        store.flush()
        ingest_s = insert_s + time.perf_counter() - t0

        def search(q: list[float], ef: int | None = None) -> list[str]:
            params: dict[str, Any] = {"metric_type": "IP"}
            if ef:
                params["params"] = {"ef": ef}
            hits = store.client.search(
                "scale", data=[q], limit=TOP_K, output_fields=["item_key"], search_params=params
            )
            return [h["id"] for h in hits[0]]

        out: dict[str, Any] = {
            "insert_rows_per_s": n / ingest_s,
            "insert_plus_flush_s": ingest_s,
            "after_ingest": _measure(search, queries, truth),
        }
        coll = _lite_collection(store)
        out.update(_lite_steady(coll, search, queries, truth))
        if index == "HNSW":
            out["ef_tradeoff"] = {
                str(ef): _measure(lambda q, ef=ef: search(q, ef), queries, truth)
                for ef in (16, 64, 128)
            }
        if coll is not None:
            out["where_time_goes"] = _profile(coll, queries)
        return out
    finally:
        store.close()


def _lite_steady(coll: Any, search: Any, queries: Any, truth: Any) -> dict[str, Any]:
    """Wait until the engine's background compaction + index builds are done (its single
    background thread drains a no-op queued behind them), sampling latency meanwhile."""
    import numpy as np

    started = time.perf_counter()
    timeline = []
    drained = coll._bg_executor.submit(lambda: None) if coll is not None else None
    while drained is not None and not drained.done():
        if time.perf_counter() - started > SETTLE_TIMEOUT_S:
            break
        lat = []
        for q in queries[:5]:
            t0 = time.perf_counter()
            search(q.tolist())
            lat.append(time.perf_counter() - t0)
        elapsed = round(time.perf_counter() - started, 1)
        timeline.append({"t_s": elapsed, "p50_ms": float(np.median(lat) * 1000)})
        wait([drained], timeout=10.0)  # returns as soon as the work is done
    return {
        "seconds_to_steady_state": time.perf_counter() - started,
        "settled": drained is not None and drained.done(),
        "latency_timeline_while_settling": timeline,
        "steady_state": _measure(search, queries, truth),
    }


# -- C++ Milvus (milvus-lite 2.5.1) ---------------------------------------------------------
def _cpp_case(root: Path, n: int, vecs: Any, queries: Any, truth: Any) -> dict | str:
    from pymilvus import DataType, MilvusClient

    from tests.cpp_milvus import CppMilvus, find_engine

    binary, why = find_engine()
    if binary is None:
        return f"skipped: {why}"
    with CppMilvus(binary, root / f"cpp-{n}") as server:
        c = MilvusClient(uri=server.uri)
        schema = c.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("id", DataType.VARCHAR, max_length=64, is_primary=True)
        schema.add_field("item_key", DataType.VARCHAR, max_length=4096)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=DIM)
        index = c.prepare_index_params()
        index.add_index(
            field_name="embedding", index_name="embedding", index_type="FLAT", metric_type="IP"
        )
        c.create_collection("scale", schema=schema, index_params=index, consistency_level="Strong")
        insert_s = _insert(lambda rows: c.insert("scale", rows), vecs)
        t0 = time.perf_counter()
        c.flush("scale")
        ingest_s = insert_s + time.perf_counter() - t0

        def search(q: list[float]) -> list[str]:
            hits = c.search(
                "scale",
                data=[q],
                limit=TOP_K,
                output_fields=["item_key"],
                search_params={"metric_type": "IP"},
            )
            return [h["id"] for h in hits[0]]

        after = _measure(search, queries, truth)
        time.sleep(10)  # local mode reports no index progress: measure again after a pause
        steady = _measure(search, queries, truth)
        c.close()
        return {
            "insert_rows_per_s": n / ingest_s,
            "insert_plus_flush_s": ingest_s,
            "after_ingest": after,
            "seconds_to_steady_state": 10.0,
            "steady_state": steady,
        }


def run(sizes: tuple[int, ...] | None = None) -> Path:
    import numpy as np

    if sizes is None:
        sizes = tuple(
            int(x) for x in os.environ.get("MMSEARCH_BENCH_ROWS", "10000,100000").split(",")
        )
    rng = np.random.RandomState(0)
    mixing = (rng.randn(DIM, LATENT_DIM) / np.sqrt(LATENT_DIM)).astype("float32")
    results: dict[str, Any] = {
        "rows": list(sizes),
        "dim": DIM,
        "data": f"unit vectors from a {LATENT_DIM}-d Gaussian mapped to {DIM}-d plus isotropic "
        f"noise ({NOISE_SHARE:.0%} of the variance); seed 0",
        "top_k": TOP_K,
        "queries_per_measurement": QUERIES,
        "hnsw_build_params": HNSW,
        "hnsw_search_ef_default": 64,
        "insert_batch_rows": BATCH,
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "cases": {},
    }
    for n in sizes:
        vecs = _embeddings(rng, mixing, n)
        queries = _embeddings(rng, mixing, QUERIES)
        truth = _exact_top(vecs, queries)
        for engine, index in (("lite", "FLAT"), ("lite", "HNSW"), ("cpp", "FLAT")):
            name = f"{engine}/{index}/{n}"
            print(f"-- {name}", flush=True)
            tmp = Path(tempfile.mkdtemp(prefix="mmsearch-scale-"))
            load = round(os.getloadavg()[0], 2)
            try:
                if engine == "lite":
                    case: Any = _lite_case(tmp, n, index, vecs, queries, truth)
                else:
                    case = _cpp_case(tmp, n, vecs, queries, truth)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(case, dict):
                case["load_avg_1m_at_start"] = load
            results["cases"][name] = case
            print(f"   {_summary(case)}", flush=True)
    return write("scale", results)


def _summary(case: Any) -> str:
    if not isinstance(case, dict):
        return str(case)
    a, s = case["after_ingest"], case["steady_state"]
    return (
        f"insert {case['insert_rows_per_s']:.0f} rows/s; after ingest p50 {a['p50_ms']:.1f} ms; "
        f"steady p50 {s['p50_ms']:.1f} / p95 {s['p95_ms']:.1f} ms, recall@9 "
        f"{s['recall_at_9']:.3f} ({case['seconds_to_steady_state']:.0f}s to steady)"
    )


if __name__ == "__main__":
    run()
