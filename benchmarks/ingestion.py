"""Ingestion: our pipeline (threaded decode ahead of batched embedding, batched upserts) vs a
notebook-style loop (open, embed, insert one image at a time), same model, same run; plus
Milvus Lite insert rows/s."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import peak_rss_mb, write


def run(n_images: int = 32, insert_rows: int = 10_000) -> Path:
    import numpy as np

    from ingestion.pipeline import Ingestor
    from ingestion.sources import folder_items
    from rag.embedding.multimodal import VisualizedBGEEmbedding
    from rag.embedding.tiny import make_embed_dir
    from rag.store.milvus import CatalogStore
    from tests.helpers import make_image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        emb = VisualizedBGEEmbedding.from_local(make_embed_dir(root / "embed", full_size=True))
        folder = root / "imgs"
        folder.mkdir()
        for i in range(n_images):
            make_image(i, (800, 600)).save(folder / f"{i:04d}.jpg", quality=90)
        items = list(folder_items(folder))

        # Notebook style: one image per call, one insert per image.
        store = CatalogStore(
            uri=str(root / "nb.db"), collection="nb", dim=emb.dim, model_id=emb.model_name
        )
        t0 = time.perf_counter()
        for i, item in enumerate(items):
            vec = emb.get_image_embedding(item.image)
            store.client.insert("nb", [{"id": str(i), "embedding": vec, "item_key": item.key}])
        nb_s = time.perf_counter() - t0
        store.close()

        store = CatalogStore(
            uri=str(root / "pipe.db"), collection="pipe", dim=emb.dim, model_id=emb.model_name
        )
        report = Ingestor(embedding=emb, store=store, batch_size=16, workers=2).run(items)
        pipe_s = report.seconds
        rerun = Ingestor(embedding=emb, store=store).run(items)
        store.close()

        # Milvus Lite insert throughput with synthetic vectors, batches of 1,000.
        ins = CatalogStore(uri=str(root / "ins.db"), collection="ins", dim=768, model_id="x")
        vecs = np.random.RandomState(0).randn(insert_rows, 768).astype("float32")
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        t0 = time.perf_counter()
        for s in range(0, insert_rows, 1000):
            ins.client.insert(
                "ins",
                [
                    {"id": str(i), "embedding": vecs[i].tolist(), "item_key": str(i)}
                    for i in range(s, s + 1000)
                ],
            )
        insert_s = time.perf_counter() - t0
        ins.close()
        return write(
            "ingestion",
            {
                "model": "visualized-bge base dimensions, random weights",
                "n_images": n_images,
                "image_size": "800x600 JPEG",
                "notebook_loop_images_per_s": n_images / nb_s,
                "pipeline_images_per_s": n_images / pipe_s,
                "ratio_pipeline_vs_loop": nb_s / pipe_s,
                "rerun_unchanged_seconds": rerun.seconds,
                "rerun_unchanged": rerun.unchanged,
                "milvus_insert_rows_per_s": insert_rows / insert_s,
                "peak_rss_mb": peak_rss_mb(),
            },
        )


if __name__ == "__main__":
    run()
