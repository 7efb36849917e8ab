"""Write random-weight models in the exact on-disk format of the real ones, offline.

    python scripts/make_tiny_models.py OUTDIR [--full-size] [--seed N] [--no-vlm]

OUTDIR/embed: a local Visualized BGE model directory (tiny by default, real base dimensions
with --full-size); OUTDIR/vlm: a tiny Qwen2-VL for the ``hf`` reranker backend. The builders
live in ``rag.embedding.tiny`` and ``rag.rerank.tiny_vlm`` so tests, benchmarks and
``mmsearch demo --synthetic`` share them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    from rag.embedding.tiny import make_embed_dir
    from rag.rerank.tiny_vlm import make_vlm_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--full-size", action="store_true", help="real base dimensions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-vlm", action="store_true", help="skip the tiny VLM")
    args = parser.parse_args(argv)
    embed = make_embed_dir(args.outdir / "embed", full_size=args.full_size, seed=args.seed)
    print(f"wrote {embed}")
    if not args.no_vlm:
        print(f"wrote {make_vlm_dir(args.outdir / 'vlm', seed=args.seed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
