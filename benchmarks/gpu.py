"""The GPU path in one command: ``python -m benchmarks gpu`` (``make bench-gpu``).

On a CUDA machine: images/s of the model alone at batch 1/16/64/256 in fp32 and bf16 (full-size
random weights, uint8 pixels copied from pinned memory and normalised on the GPU), the
end-to-end local ``ingest`` rate on generated JPEGs (decode threads vs the model), query
embedding p50 (text, image, composed) and peak GPU memory; written to
``benchmarks/results/gpu.json``. Without CUDA it says so in one line and exits 0.

``measure(device="cpu", tiny=True, ...)`` drives the same code on a CPU with the tiny model (the
test suite does, so the GPU path cannot rot unseen).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write
from benchmarks.dtype import DTYPES, _images, pipeline_rate, query_latency

BATCHES = (1, 16, 64, 256)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def model_rate(emb: Any, batch: int, device: str, steps: int) -> float:
    """images/s of ``embed_pixels`` on random uint8 batches of ``batch`` images."""
    import torch

    size = emb.model.vision_config.image_size
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    emb.embed_pixels(pixels)  # warm-up (cuDNN/cuBLAS pick kernels)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        emb.embed_pixels(pixels)
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def measure(
    device: str, *, tiny: bool, batches: tuple[int, ...], n_ingest: int, steps: int
) -> dict[str, Any]:
    """The numbers of :func:`run`, without writing them."""
    import torch

    from ingestion.pipeline import default_workers
    from rag.core.images import load_image
    from rag.embedding.multimodal import VisualizedBGEEmbedding
    from rag.embedding.tiny import make_embed_dir

    out: dict[str, Any] = {"images_per_s": {}, "peak_gpu_mb": {}, "query_embed": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = make_embed_dir(root / "embed", full_size=not tiny)
        paths = _images(root / "images", n_ingest)
        for dt in DTYPES:
            emb = VisualizedBGEEmbedding.from_local(model_dir, device=device, dtype=dt)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            out["images_per_s"][dt] = {
                str(b): model_rate(emb, b, device, steps if b < 64 else max(2, steps // 4))
                for b in batches
            }
            if device == "cuda":
                out["peak_gpu_mb"][dt] = torch.cuda.max_memory_allocated() / 2**20
            out["query_embed"][dt] = query_latency(emb, load_image(paths[0]))
            workers = default_workers(device)  # what `mmsearch ingest` uses there
            out.setdefault("ingest_images_per_s", {})[dt] = pipeline_rate(
                emb, paths, root, emb.embed_batch_size, workers
            )
            out["ingest_decode_threads"] = workers
            out["ingest_batch_size"] = emb.embed_batch_size
            del emb
    out["ratio_bf16_vs_fp32"] = {
        b: out["images_per_s"]["bfloat16"][b] / out["images_per_s"]["float32"][b]
        for b in out["images_per_s"]["float32"]
    }
    return out


def run(
    device: str = "cuda",
    *,
    tiny: bool = False,
    batches: tuple[int, ...] = BATCHES,
    n_ingest: int = 512,
    steps: int = 8,
) -> Path | None:
    """Measure on ``device`` and write ``gpu.json``; None (one line printed) without CUDA."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print("benchmarks gpu: no CUDA device on this machine; nothing measured")
        return None
    data = measure(device, tiny=tiny, batches=batches, n_ingest=n_ingest, steps=steps)
    name = "gpu" if device == "cuda" and not tiny else f"gpu-{device}{'-tiny' if tiny else ''}"
    return write(
        name,
        {
            "model": "tiny random weights"
            if tiny
            else "visualized-bge base dimensions, random weights",
            "device": device,
            **data,
        },
    )


if __name__ == "__main__":
    run()
