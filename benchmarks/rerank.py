"""Rerank latency split into caption / grid / generation on the tiny random Qwen2-VL (the real
generation path; absolute numbers say nothing about Phi-3.5), and the prompt size the real
Phi-3.5-vision processor would see, computed on paper from its HD-transform formula."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import percentiles, write


def phi3v_image_tokens(width: int, height: int, num_crops: int = 16) -> dict[str, int]:
    """Image tokens Phi-3/3.5-vision's processor produces (HD transform to 336-px crops)."""
    w, h = (width, height) if width >= height else (height, width)
    ratio = w / h
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w = scale * 336
    new_h = math.ceil(int(new_w / ratio) / 336) * 336
    crops_w, crops_h = new_w // 336, new_h // 336
    tokens = (crops_w * crops_h + 1) * 144 + 1 + (crops_h + 1) * 12
    return {"crops": crops_w * crops_h, "image_tokens": tokens}


def _nodes(paths: list[Path]) -> list[Any]:
    from llama_index.core.schema import ImageNode, NodeWithScore

    return [
        NodeWithScore(
            node=ImageNode(id_=str(i), image_path=str(p), metadata={"image_path": str(p)}),
            score=1.0,
        )
        for i, p in enumerate(paths)
    ]


def run(repeats: int = 5) -> Path:
    from llama_index.core.schema import QueryBundle

    from rag.rerank.backends.hf import TransformersVLM
    from rag.rerank.grid import build_grid
    from rag.rerank.postprocessor import VLMReranker
    from rag.rerank.tiny_vlm import make_vlm_dir
    from tests.helpers import make_image

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vlm = TransformersVLM.from_pretrained(make_vlm_dir(root / "vlm"), device="cpu")
        paths = []
        for i in range(9):
            p = root / f"{i}.jpg"
            make_image(i, (500, 500)).save(p)
            paths.append(p)
        q = root / "q.jpg"
        make_image(99, (600, 600)).save(q)
        bundle = QueryBundle(query_str="a phone case with this", image_path=str(q))
        for mode, kwargs in (
            ("listwise-constrained", {}),
            ("listwise-free", {"constrained": False}),
            ("first-token", {"strategy": "first-token"}),
        ):
            timings: dict[str, list[float]] = {}
            tokens: dict[str, int] = {}
            for _ in range(repeats):
                rr = VLMReranker(vlm=vlm, **kwargs)  # fresh: the caption is not cached
                outcome = rr.rerank(_nodes(paths), bundle)
                for key, v in outcome.timings.items():
                    timings.setdefault(key, []).append(v)
                tokens = outcome.tokens
            out[mode] = {
                "measured_on": "tiny random Qwen2-VL (the real hf generation path)",
                "tokens": tokens,
                **{f"{k}_ms": percentiles(v) for k, v in timings.items()},
            }
        grid = build_grid([str(p) for p in paths], query=str(q))
        out["phi35_computed"] = {
            "method": (
                "computed, not measured: Phi-3.5-vision's HD transform (336-px crops) "
                "applied to the image sizes; no Phi-3.5 model was run"
            ),
            "grid_size": list(grid.size),
            "grid": phi3v_image_tokens(*grid.size),  # MMSEARCH_RERANK_NUM_CROPS 16
            "query_image_600x600": phi3v_image_tokens(600, 600),
            # the caption's own setting, MMSEARCH_CAPTION_NUM_CROPS: 4 by default
            "caption_query_image_1000x1000": {
                str(n): phi3v_image_tokens(1000, 1000, n) for n in (4, 16)
            },
            "constrained_new_tokens": 2 * 9,  # 9 digits + 8 commas + the end token
        }
    return write("rerank", out)


if __name__ == "__main__":
    run()
