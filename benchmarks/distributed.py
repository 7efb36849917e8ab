"""Distributed ingestion on Ray Data vs the local pipeline on this machine (Ray's overhead,
honestly), and the per-stage costs that an estimate for a bigger cluster starts from.

Same catalog (800x600 JPEGs), same full-size random-weight model (Visualized BGE base
dimensions), same machine:

* ``local``: :class:`ingestion.pipeline.Ingestor` (decode threads ahead of batched embedding on
  every core);
* ``ray``: :func:`ingestion.distributed.ingest_on_ray` on a local Ray with all cores: one CPU
  embedding actor (a CPU stays free for the decode tasks), the driver writes (Milvus Lite). Its
  time includes starting the actor and loading the model in it, not ``ray.init``;
* the re-run over the unchanged catalog on both paths: nothing is embedded, so it is each
  path's fixed cost.

Per-stage costs, one process, one image at a time: fingerprint (read + SHA-256), decode +
preprocess, embedding per image (batches of 16, this CPU), and the model's FLOPs per image
(torch's FlopCounterMode), the input to a GPU estimate. Milvus insert rates are in
``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write

ROUNDS = 2


def _stage_costs(emb: Any, items: list[Any], size: int) -> dict[str, float]:
    import torch

    from ingestion.pipeline import decode, fingerprint

    cache = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    prints = [fingerprint(item, cache) for item in items]
    fp_s = (time.perf_counter() - t0) / len(items)
    t0 = time.perf_counter()
    pixels = [decode(fp, size)[1] for fp in prints]
    dec_s = (time.perf_counter() - t0) / len(items)
    batch = torch.stack(pixels[:16])
    emb.embed_pixels(batch[:2])  # warm-up
    t0 = time.perf_counter()
    emb.embed_pixels(batch)
    emb_s = (time.perf_counter() - t0) / len(batch)
    return {
        "fingerprint_ms_per_image": fp_s * 1000,
        "decode_preprocess_ms_per_image": dec_s * 1000,
        "embed_ms_per_image_cpu_batch16": emb_s * 1000,
    }


def _gflops_per_image(emb: Any, pixel: Any) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        emb.embed_pixels(pixel.unsqueeze(0))
    return counter.get_total_flops() / 1e9


def _ray_round(items: list[Any], model_dir: Path, db: Path, dim: int, model_id: str) -> dict:
    from ingestion.distributed import ingest_on_ray
    from rag.store.milvus import CatalogStore

    store = CatalogStore(uri=str(db), collection="c", dim=dim, model_id=model_id)
    first = ingest_on_ray(items, store=store, model_dir=model_dir, batch_size=16)
    rerun = ingest_on_ray(items, store=store, model_dir=model_dir, batch_size=16)
    store.close()
    return {"first": first, "rerun": rerun}


def _local_round(items: list[Any], emb: Any, db: Path) -> dict:
    from ingestion.pipeline import Ingestor
    from rag.store.milvus import CatalogStore

    store = CatalogStore(uri=str(db), collection="c", dim=emb.dim, model_id=emb.model_name)
    first = Ingestor(embedding=emb, store=store, batch_size=16, workers=2).run(items)
    rerun = Ingestor(embedding=emb, store=store, batch_size=16, workers=2).run(items)
    store.close()
    return {"first": first, "rerun": rerun}


def _rounds(items: list[Any], emb: Any, model_dir: Path, root: Path) -> tuple[dict, float]:
    """Local and Ray rounds, interleaved: on a shared machine the load drifts, and both paths
    should see the same drift. Returns the rounds and the ``ray.init`` time."""
    from ingestion.distributed import ray_session

    rounds: dict[str, list[dict]] = {"local": [], "ray": []}
    t0 = time.perf_counter()
    with ray_session("local"):  # a new local Ray with every core of this machine
        init_s = time.perf_counter() - t0
        for r in range(ROUNDS):
            for path in ("local", "ray"):
                load = round(os.getloadavg()[0], 2)
                db = root / f"{path}{r}.db"
                res = (
                    _local_round(items, emb, db)
                    if path == "local"
                    else _ray_round(items, model_dir, db, emb.dim, emb.model_name)
                )
                rounds[path].append({**res, "load": load})
    return rounds, init_s


def run(n_images: int = 32) -> Path:
    from ingestion.sources import folder_items
    from rag.embedding.multimodal import VisualizedBGEEmbedding
    from rag.embedding.tiny import make_embed_dir
    from tests.helpers import make_image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = make_embed_dir(root / "embed", full_size=True)
        t0 = time.perf_counter()
        emb = VisualizedBGEEmbedding.from_local(model_dir)
        load_s = time.perf_counter() - t0
        folder = root / "imgs"
        folder.mkdir()
        for i in range(n_images):
            make_image(i, (800, 600)).save(folder / f"{i:04d}.jpg", quality=90)
        items = list(folder_items(folder))
        size = emb.model.vision_config.image_size
        stages = _stage_costs(emb, items, size)
        stages["model_gflops_per_image"] = _gflops_per_image(emb, _one_pixel(items[0], size))

        rounds, init_s = _rounds(items, emb, model_dir, root)
        summary = {
            path: {
                "images_per_s": [n_images / x["first"].seconds for x in runs],
                "rerun_unchanged_s": [x["rerun"].seconds for x in runs],
                "load_avg_1m_at_start": [x["load"] for x in runs],
            }
            for path, runs in rounds.items()
        }
        local_s = sum(x["first"].seconds for x in rounds["local"])
        ray_s = sum(x["first"].seconds for x in rounds["ray"])
        same = all(
            (a["first"].added, a["first"].failed) == (b["first"].added, b["first"].failed)
            for a, b in zip(rounds["local"], rounds["ray"], strict=True)
        )
        return write(
            "distributed",
            {
                "model": "visualized-bge base dimensions, random weights",
                "n_images": n_images,
                "image_size": "800x600 JPEG",
                "batch_size": 16,
                "rounds": ROUNDS,
                **summary,
                "ratio_ray_vs_local_images_per_s": local_s / ray_s,
                "ray_init_s": init_s,
                "ray_embedding_actors": 1,
                "ray_report_equals_local": same,
                "model_load_s_local": load_s,
                "stages": stages,
            },
        )


def _one_pixel(item: Any, size: int) -> Any:
    from ingestion.pipeline import decode, fingerprint

    return decode(fingerprint(item, Path(tempfile.mkdtemp())), size)[1]


if __name__ == "__main__":
    run()
