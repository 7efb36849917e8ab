"""Embedding throughput: our batched image path vs one image per call (the reference's usage
pattern), on full-size random weights (Visualized BGE base dimensions)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import peak_rss_mb, timed, write


def run(n_images: int = 16, batch_sizes: tuple[int, ...] = (1, 8, 16)) -> Path:
    from rag.embedding.multimodal import VisualizedBGEEmbedding
    from rag.embedding.tiny import make_embed_dir
    from tests.helpers import make_image

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_embed_dir(Path(tmp) / "embed", full_size=True)
        emb = VisualizedBGEEmbedding.from_local(model_dir, device="auto", dtype="auto")
        images = [make_image(i, (400, 300)) for i in range(n_images)]
        emb.get_image_embedding(images[0])  # warm-up
        loop_s = timed(lambda: [emb.get_image_embedding(im) for im in images])
        batched = {}
        for bs in batch_sizes:
            emb.embed_batch_size = bs
            batched[bs] = timed(lambda: emb.get_image_embedding_batch(images))
        text_s = timed(lambda: [emb.get_text_embedding(f"red shoes {i}") for i in range(16)])
        composed_s = timed(
            lambda: [emb.get_composed_embedding(im, "a phone case with this") for im in images[:8]]
        )
        best_bs = min(batched, key=lambda b: batched[b])
        return write(
            "embedding",
            {
                "model": "visualized-bge base dimensions, random weights",
                "device": emb.device,
                "n_images": n_images,
                "loop_images_per_s": n_images / loop_s,
                "batched_images_per_s": {str(b): n_images / s for b, s in batched.items()},
                "best_batch_size": best_bs,
                "ratio_batched_vs_loop": loop_s / batched[best_bs],
                "text_ms_per_item": text_s / 16 * 1000,
                "composed_ms_per_item": composed_s / 8 * 1000,
                "peak_rss_mb": peak_rss_mb(),
            },
        )


if __name__ == "__main__":
    run()
