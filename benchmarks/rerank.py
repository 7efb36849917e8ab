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


def run(repeats: int = 5) -> Path:
    from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle

    from rag.grid import build_grid
    from rag.report import query_report
    from rag.reranker import VLMReranker
    from rag.tiny_vlm import make_vlm_dir
    from rag.vlm import TransformersVLM
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
        for mode, kwargs in (
            ("listwise-constrained", {}),
            ("listwise-free", {"constrained": False}),
            ("first-token", {"strategy": "first-token"}),
        ):
            stats: dict[str, list[float]] = {}
            for _ in range(repeats):
                rr = VLMReranker(vlm=vlm, **kwargs)  # fresh: the caption is not cached
                nodes = [
                    NodeWithScore(
                        node=ImageNode(
                            id_=str(i), image_path=str(p), metadata={"image_path": str(p)}
                        ),
                        score=1.0,
                    )
                    for i, p in enumerate(paths)
                ]
                with query_report() as rep:
                    rr.postprocess_nodes(
                        nodes,
                        query_bundle=QueryBundle(
                            query_str="a phone case with this", image_path=str(q)
                        ),
                    )
                for key, v in rep.items():
                    if (
                        key.startswith("timings_")
                        or key.startswith("rerank_")
                        and isinstance(v, (int, float))
                    ):
                        stats.setdefault(key, []).append(float(v))
            out[mode] = {
                k: (percentiles(v) if k.startswith("timings_") else v[0]) for k, v in stats.items()
            }
        grid = build_grid([str(p) for p in paths], query=str(q))
        prompt_text_tokens = 260  # the rerank prompt, tokenised by Phi-3's Llama tokenizer ≈
        out["phi35_on_paper"] = {
            "grid_size": list(grid.size),
            "grid": phi3v_image_tokens(*grid.size),
            "query_image_600x600": phi3v_image_tokens(600, 600),
            "rerank_prompt_tokens_estimate": phi3v_image_tokens(*grid.size)["image_tokens"]
            + prompt_text_tokens,
            "constrained_new_tokens": 2 * 9,  # 9 digits + 8 commas + end
            "json_reply_new_tokens_estimate": 60,
        }
    return write("rerank", out)


if __name__ == "__main__":
    run()
