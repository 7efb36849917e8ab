"""bf16 vs fp32 on this CPU, and what the ingestion pipeline keeps of the model's speed.

One process, one machine, full-size random weights (Visualized BGE base dimensions):
* pure model: images/s of ``embed_pixels`` on already decoded batches, per dtype;
* pipeline: ``Ingestor`` (fingerprint, decode threads, embed, Milvus Lite writes) on the same
  images, same batch size, per dtype and decode-thread count -> pipeline / pure model;
* decode alone: images/s with threads vs processes (what keeps a fast model fed);
* query embedding latency p50 (text, image, composed) per dtype;
* fidelity: min cosine bf16 vs fp32 over the images.
Rounds alternate the dtypes so drift in machine load hits both alike.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import percentiles, write

DTYPES = ("float32", "bfloat16")


def _images(root: Path, n: int) -> list[Path]:
    from tests.helpers import make_image

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"img_{i:04d}.jpg"
        make_image(i, (640, 480)).save(p, quality=90)
        paths.append(p)
    return paths


def _decode_one(path: str) -> Any:
    from rag.core.images import load_image
    from rag.embedding.preprocess import preprocess_uint8

    return preprocess_uint8(load_image(path), 224)


def decode_rates(paths: list[Path], workers: int) -> dict[str, float]:
    """Decode + resize images/s: one thread, ``workers`` threads, ``workers`` processes."""
    names = [str(p) for p in paths]
    out = {}
    t0 = time.perf_counter()
    for name in names:
        _decode_one(name)
    out["1_thread"] = len(names) / (time.perf_counter() - t0)
    with ThreadPoolExecutor(workers) as pool:
        t0 = time.perf_counter()
        list(pool.map(_decode_one, names))
        out[f"{workers}_threads"] = len(names) / (time.perf_counter() - t0)
    # spawn, not fork: a forked child of a process whose torch/OpenMP threads are running
    # can deadlock (it did here)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as procs:
        list(procs.map(_decode_one, names[:workers]))  # start the workers first
        t0 = time.perf_counter()
        list(procs.map(_decode_one, names, chunksize=4))
        out[f"{workers}_processes"] = len(names) / (time.perf_counter() - t0)
    return out


def pure_model_rate(emb: Any, pixels: Any, batch_size: int) -> float:
    """images/s of the model alone on decoded uint8 batches."""
    t0 = time.perf_counter()
    for s in range(0, len(pixels), batch_size):
        emb.embed_pixels(pixels[s : s + batch_size])
    return len(pixels) / (time.perf_counter() - t0)


def pipeline_rate(emb: Any, paths: list[Path], root: Path, batch_size: int, workers: int) -> float:
    """images/s of the whole local ingestion into a fresh Milvus Lite collection."""
    from ingestion.pipeline import Ingestor
    from ingestion.service import list_items
    from rag.store.milvus import CatalogStore

    db = root / f"pipe-{emb.dtype}-{workers}-{time.monotonic_ns()}.db"
    store = CatalogStore(uri=str(db), collection="b", dim=emb.dim, model_id=emb.model_name)
    try:
        items = list_items([str(paths[0].parent)])
        t0 = time.perf_counter()
        report = Ingestor(embedding=emb, store=store, batch_size=batch_size, workers=workers).run(
            items
        )
        seconds = time.perf_counter() - t0
    finally:
        store.close()
    assert report.added == len(paths), report.to_dict()
    return len(paths) / seconds


def query_latency(emb: Any, image: Any, repeats: int = 5) -> dict[str, float]:
    """p50 ms of a text, an image and a composed query embedding."""

    def p50(fn: Callable[[], Any]) -> float:
        fn()  # warm-up
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return percentiles(samples)["p50_ms"]

    return {
        "text_p50_ms": p50(lambda: emb.get_text_embedding("red leopard phone case")),
        "image_p50_ms": p50(lambda: emb.get_image_embedding(image)),
        "composed_p50_ms": p50(lambda: emb.get_composed_embedding(image, "a phone case with this")),
    }


def _min_cos(a: list[list[float]], b: list[list[float]]) -> float:
    import numpy as np

    x, y = np.asarray(a), np.asarray(b)
    return float(((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)).min())


def run(n_images: int = 48, batch_size: int = 16, rounds: int = 2) -> Path:
    import torch

    from rag.core.device import choose_dtype
    from rag.core.images import load_image
    from rag.embedding.multimodal import VisualizedBGEEmbedding
    from rag.embedding.tiny import make_embed_dir

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = make_embed_dir(root / "embed", full_size=True)
        paths = _images(root / "images", n_images)
        pixels = torch.stack([_decode_one(str(p)) for p in paths])
        models = {
            dt: VisualizedBGEEmbedding.from_local(model_dir, device="cpu", dtype=dt)
            for dt in DTYPES
        }
        vectors = {dt: models[dt].embed_pixels(pixels[:batch_size]) for dt in DTYPES}  # warm
        pure: dict[str, list[float]] = {dt: [] for dt in DTYPES}
        pipe: dict[str, dict[int, list[float]]] = {dt: {1: [], 2: []} for dt in DTYPES}
        for _ in range(rounds):
            for dt in DTYPES:
                pure[dt].append(pure_model_rate(models[dt], pixels, batch_size))
                for workers in (1, 2):
                    rate = pipeline_rate(models[dt], paths, root, batch_size, workers)
                    pipe[dt][workers].append(rate)
        query = {dt: query_latency(models[dt], load_image(paths[0])) for dt in DTYPES}
        decode = decode_rates(paths, min(2, cores))
    best = {dt: max(v) for dt, v in pure.items()}
    best_pipe = {dt: {w: max(v) for w, v in per.items()} for dt, per in pipe.items()}
    auto = choose_dtype("auto", torch.device("cpu"))
    return write(
        "dtype",
        {
            "model": "visualized-bge base dimensions, random weights",
            "n_images": n_images,
            "batch_size": batch_size,
            "rounds": rounds,
            "auto_dtype": {"dtype": auto.name, "reason": auto.reason},
            "pure_model_images_per_s": best,
            "pipeline_images_per_s": {
                dt: {str(w): r for w, r in v.items()} for dt, v in best_pipe.items()
            },
            "all_rounds": {"pure": pure, "pipeline": pipe},
            "ratio_bf16_vs_fp32_pure": best["bfloat16"] / best["float32"],
            "ratio_bf16_vs_fp32_pipeline": max(best_pipe["bfloat16"].values())
            / max(best_pipe["float32"].values()),
            "ratio_pipeline_vs_pure": {
                dt: {str(w): r / best[dt] for w, r in best_pipe[dt].items()} for dt in DTYPES
            },
            "query_embed": query,
            "ratio_query_fp32_vs_bf16": {
                k: query["float32"][k] / query["bfloat16"][k] for k in query["float32"]
            },
            "decode_images_per_s": decode,
            "min_cosine_bf16_vs_fp32": _min_cos(vectors["float32"], vectors["bfloat16"]),
        },
    )


if __name__ == "__main__":
    run()
