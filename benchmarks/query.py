"""Query latency by stage: embed (full-size random weights; text, image and composed p50 in fp32
and bf16) and Milvus Lite search at 10k and 100k rows of synthetic unit vectors, FLAT vs HNSW,
with HNSW recall@9 against FLAT."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import percentiles, write
from benchmarks.dtype import query_latency


def _fill(store: Any, vecs: Any) -> float:
    t0 = time.perf_counter()
    for s in range(0, len(vecs), 1000):
        store.client.insert(
            store.collection,
            [
                {
                    "id": str(i),
                    "embedding": vecs[i].tolist(),
                    "item_key": str(i),
                    "category": "even" if i % 2 == 0 else "odd",
                }
                for i in range(s, min(s + 1000, len(vecs)))
            ],
        )
    return time.perf_counter() - t0


def run(sizes: tuple[int, ...] | None = None, n_queries: int = 50) -> Path:
    """Sizes default to 10k rows; MMSEARCH_BENCH_ROWS=10000,100000 adds larger ones (a 100k
    HNSW build in the pure-Python Milvus Lite took over 8 minutes here)."""
    import os

    import numpy as np

    if sizes is None:
        sizes = tuple(int(x) for x in os.environ.get("MMSEARCH_BENCH_ROWS", "10000").split(","))

    from rag.embedding.multimodal import VisualizedBGEEmbedding
    from rag.embedding.tiny import make_embed_dir
    from rag.store.milvus import CatalogStore
    from tests.helpers import make_image

    rng = np.random.RandomState(0)
    results: dict[str, Any] = {"search": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = make_embed_dir(root / "embed", full_size=True)
        img = make_image(1, (640, 480))
        # query embedding p50 per dtype (bf16 vs fp32 on this CPU), one model at a time
        results["embed"] = {}
        for dt in ("float32", "bfloat16"):
            emb = VisualizedBGEEmbedding.from_local(model_dir, device="cpu", dtype=dt)
            results["embed"][dt] = query_latency(emb, img)
            del emb
        results["embed"]["ratio_fp32_vs_bf16"] = {
            k: results["embed"]["float32"][k] / results["embed"]["bfloat16"][k]
            for k in results["embed"]["float32"]
        }
        for n in sizes:
            vecs = rng.randn(n, 768).astype("float32")
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            queries = rng.randn(n_queries, 768).astype("float32")
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            per: dict[str, Any] = {}
            found: dict[str, list[set[str]]] = {}
            for index_type in ("FLAT", "HNSW"):
                store = CatalogStore(
                    uri=str(root / f"{index_type}{n}.db"),
                    collection="q",
                    dim=768,
                    model_id="synthetic",
                    index_type=index_type,
                )
                insert_s = _fill(store, vecs)
                t0 = time.perf_counter()
                store.flush()  # as ingestion does: unsealed rows are searched by brute force
                flush_s = time.perf_counter() - t0
                lat, hits = [], []
                for q in queries:
                    t0 = time.perf_counter()
                    res = store.client.search(
                        "q", data=[q.tolist()], limit=9, output_fields=["item_key"]
                    )
                    lat.append(time.perf_counter() - t0)
                    hits.append({h["id"] for h in res[0]})
                filt = [
                    _t(
                        lambda q=q, store=store: store.client.search(
                            "q", data=[q.tolist()], limit=9, filter='category == "even"'
                        )
                    )
                    for q in queries[:20]
                ]
                per[index_type] = {
                    "insert_s": insert_s,
                    "flush_s": flush_s,
                    "search": percentiles(lat),
                    "filtered_search": percentiles(filt),
                }
                found[index_type] = hits
                store.close()
            recall = np.mean(
                [len(h & f) / 9 for h, f in zip(found["HNSW"], found["FLAT"], strict=True)]
            )
            per["hnsw_recall_at_9_vs_flat"] = float(recall)
            per["ratio_flat_vs_hnsw_p50"] = (
                per["FLAT"]["search"]["p50_ms"] / per["HNSW"]["search"]["p50_ms"]
            )
            results["search"][str(n)] = per
    from benchmarks.common import peak_rss_mb

    results["peak_rss_mb"] = peak_rss_mb()  # model + Milvus Lite + the largest collection
    return write("query", results)


def _t(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    run()
