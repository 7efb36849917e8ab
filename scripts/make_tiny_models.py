"""Write random-weight models in the exact on-disk format of the real ones, offline.

    python scripts/make_tiny_models.py OUTDIR [--full-size] [--seed N]

OUTDIR/embed: a local Visualized BGE model directory (tiny by default, real base dimensions
with --full-size). The logic lives in ``rag.tiny_models`` so tests, benchmarks and
``mmsearch demo --synthetic`` share it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.tiny_models import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
