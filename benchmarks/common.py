"""Shared benchmark plumbing: machine info, timing, peak memory, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# CPU features that decide matmul speed (bf16 support above all).
_NOTABLE_FLAGS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "fma"}


def machine_info() -> dict[str, Any]:
    import torch

    from rag.core.device import cpu_flags, cpu_model

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    flags = cpu_flags()
    if flags:
        info["cpu_flags"] = sorted(flags & _NOTABLE_FLAGS)
    if hasattr(os, "getloadavg"):
        # Other work on the machine skews absolute numbers; ratios within one run hold better.
        info["load_avg_1m_at_write"] = round(os.getloadavg()[0], 2)
    return info


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(round(q * (len(s) - 1))))]  # noqa: E731
    return {
        "p50_ms": pick(0.5) * 1000,
        "p95_ms": pick(0.95) * 1000,
        "mean_ms": statistics.fmean(s) * 1000,
        "n": len(s),
    }


def write(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **data}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return path
