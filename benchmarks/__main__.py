"""Run the benchmarks: ``python -m benchmarks [NAME ...]`` with NAME one of embedding, dtype,
hybrid, ingestion, query, rerank, serve, scale, distributed, gpu (all by default); each writes
benchmarks/results/<name>.json (gpu only on a CUDA machine: elsewhere it says so and exits 0)."""

from __future__ import annotations

import sys

from benchmarks import (
    distributed,
    dtype,
    embedding,
    gpu,
    hybrid,
    ingestion,
    query,
    rerank,
    scale,
    serve,
)

ALL = {
    "embedding": embedding.run,
    "dtype": dtype.run,
    "hybrid": hybrid.run,
    "ingestion": ingestion.run,
    "query": query.run,
    "rerank": rerank.run,
    "serve": serve.run,
    "scale": scale.run,
    "distributed": distributed.run,
    "gpu": gpu.run,
}


def main(argv: list[str]) -> int:
    names = argv or list(ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(ALL)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== {name}", flush=True)
        ALL[name]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
