"""Hybrid retrieval: what the BM25 text index costs and what the modes find.

* ``latency``: store-level top-9 search at 10k rows (768-d unit vectors, generated titles and
  descriptions), dense vs keyword vs hybrid, interleaved per query so machine load hits all
  modes alike; hybrid at the default leg depth (50) and at depth = top_k. Measured right after
  the insert + flush and again after a settle pause (Milvus Lite indexes in the background).
  The query embedding is the same for dense and hybrid and not included (see query.json).
* ``ingest``: insert rows/s of the same 10k rows into a collection with and without the BM25
  field (the text is stored in both), alternated three times; wall and process CPU time.
* ``quality``: top-1 rates on generated catalogs with the tiny random-weight model, which sees
  no meaning in text: (a) text queries by unique title words, (b) by a unique word plus a
  shared noun, and (c) image + instruction queries whose instruction names an attribute only
  the title carries, searched dense vs hybrid (the instruction also sent to BM25). These show
  the mechanics of the fusion, not the quality of Visualized BGE's real weights.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import percentiles, write

ROWS = int(os.environ.get("MMSEARCH_BENCH_HYBRID_ROWS", "10000"))
SETTLE_S = float(os.environ.get("MMSEARCH_BENCH_SETTLE_S", "30"))


def _texts(n: int, rng: Any) -> tuple[list[str], list[str]]:
    """Titles (4-9 words) and descriptions (12-30 words) over a 3,000-word Zipf vocabulary."""
    vocab = [f"w{i}" for i in range(3000)]
    p = 1.0 / (1.0 + rng.permutation(3000))
    p /= p.sum()

    def words(k: int) -> str:
        return " ".join(rng.choice(vocab, size=k, p=p))

    return (
        [words(int(rng.randint(4, 10))) for _ in range(n)],
        [words(int(rng.randint(12, 31))) for _ in range(n)],
    )


def _rows(n: int, rng: Any) -> list[dict[str, Any]]:
    vecs = rng.randn(n, 768).astype("float32")
    vecs /= (vecs**2).sum(axis=1, keepdims=True) ** 0.5
    titles, descs = _texts(n, rng)
    return [
        {
            "id": f"r{i}",
            "embedding": vecs[i].tolist(),
            "item_key": f"k{i}",
            "title": titles[i],
            "category": ("even", "odd")[i % 2],
            "text": f"{titles[i]}\n{descs[i]}",
            "_node_content": '{"metadata": {}}',
            "_node_type": "ImageNode",
        }
        for i in range(n)
    ]


def _store(path: Path, text_index: bool) -> Any:
    from rag.store.milvus import CatalogStore

    return CatalogStore(
        uri=str(path), collection="h", dim=768, model_id="synthetic", text_index=text_index
    )


def _insert(store: Any, rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Wall and CPU seconds of inserting ``rows`` (batches of 1,000) and flushing. Milvus Lite
    runs in this process, so the CPU time includes its work and is less skewed by other
    processes on a shared machine than the wall time."""
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(0, len(rows), 1000):
        store.client.insert("h", rows[s : s + 1000])
    store.flush()
    return time.perf_counter() - t0, time.process_time() - c0


def ingest_cost(root: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Insert + flush of the same rows with vs without the BM25 field; runs alternate (plain,
    bm25, bm25, plain, plain, bm25) so a drifting load hits both alike; best run of each."""
    wall: dict[str, list[float]] = {"plain": [], "bm25": []}
    cpu: dict[str, list[float]] = {"plain": [], "bm25": []}
    create: dict[str, list[float]] = {"plain": [], "bm25": []}
    for i, kind in enumerate(("plain", "bm25", "bm25", "plain", "plain", "bm25")):
        t0 = time.perf_counter()
        store = _store(root / f"ingest{i}.db", text_index=kind == "bm25")
        create[kind].append(time.perf_counter() - t0)
        w, c = _insert(store, rows)
        wall[kind].append(w)
        cpu[kind].append(c)
        store.close()
    rate = {k: len(rows) / min(v) for k, v in wall.items()}
    cpu_rate = {k: len(rows) / min(v) for k, v in cpu.items()}
    return {
        "rows": len(rows),
        "insert_flush_wall_s": wall,
        "insert_flush_cpu_s": cpu,
        "rows_per_s_best": rate,
        "rows_per_cpu_s_best": cpu_rate,
        "ratio_rows_per_s_bm25_vs_plain": rate["bm25"] / rate["plain"],
        "ratio_rows_per_cpu_s_bm25_vs_plain": cpu_rate["bm25"] / cpu_rate["plain"],
        "create_collection_s": create,
    }


def _search_round(vs: Any, queries: list[tuple[list[float], str]], top_k: int = 9) -> Any:
    from llama_index.core.vector_stores import VectorStoreQuery
    from llama_index.core.vector_stores.types import VectorStoreQueryMode as M

    def timed(q: VectorStoreQuery) -> float:
        t0 = time.perf_counter()
        vs.query(q)
        return time.perf_counter() - t0

    lat: dict[str, list[float]] = {"dense": [], "keyword": [], "hybrid": [], "hybrid_depth9": []}
    for vec, text in queries:  # interleaved: every mode sees the same load
        lat["dense"].append(timed(VectorStoreQuery(query_embedding=vec, similarity_top_k=top_k)))
        lat["keyword"].append(
            timed(VectorStoreQuery(query_str=text, similarity_top_k=top_k, mode=M.TEXT_SEARCH))
        )
        for name, depth in (("hybrid", 50), ("hybrid_depth9", top_k)):
            lat[name].append(
                timed(
                    VectorStoreQuery(
                        query_embedding=vec,
                        query_str=text,
                        similarity_top_k=depth,
                        sparse_top_k=depth,
                        hybrid_top_k=top_k,
                        mode=M.HYBRID,
                    )
                )
            )
    out: dict[str, Any] = {k: percentiles(v) for k, v in lat.items()}
    out["ratio_p50_hybrid_vs_dense"] = out["hybrid"]["p50_ms"] / out["dense"]["p50_ms"]
    out["ratio_p50_keyword_vs_dense"] = out["keyword"]["p50_ms"] / out["dense"]["p50_ms"]
    return out


def latency(root: Path, rows: list[dict[str, Any]], rng: Any, n_queries: int = 40) -> Any:
    store = _store(root / "latency.db", text_index=True)
    _insert(store, rows)
    qv = rng.randn(n_queries, 768).astype("float32")
    qv /= (qv**2).sum(axis=1, keepdims=True) ** 0.5
    titles, _ = _texts(n_queries, rng)
    queries = [(qv[i].tolist(), " ".join(titles[i].split()[:3])) for i in range(n_queries)]
    vs = store.vector_store
    _search_round(vs, queries[:5])  # warm-up
    out = {"rows": len(rows), "after_flush": _search_round(vs, queries)}
    time.sleep(SETTLE_S)
    out[f"after_{int(SETTLE_S)}s"] = _search_round(vs, queries)
    store.close()
    return out


def run() -> Path:
    import numpy as np

    from benchmarks.hybrid_quality import quality

    rng = np.random.RandomState(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = _rows(ROWS, rng)
        results: dict[str, Any] = {
            "ingest": ingest_cost(root, rows),
            "latency": latency(root, rows, rng),
            "quality": quality(root / "quality"),
        }
    return write("hybrid", results)


if __name__ == "__main__":
    run()
