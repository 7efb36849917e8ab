"""Which torch device and dtype a model runs on: one neutral place for the embedding and the VLM.

``dtype=auto`` decides per machine and says why (:class:`DTypeChoice`): CUDA -> bf16 (fp16 where
bf16 is unsupported), MPS -> fp16, CPU -> bf16 only where the CPU multiplies bf16 matrices
natively. AMX (``amx_bf16``) always does; without any bf16 instructions bf16 is emulated and
slower than fp32; in between (``avx512_bf16`` without AMX, Arm's ``bf16``) the answer depends on
the chip, so a one-off micro-benchmark decides and its result is cached per machine.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rag.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_DTYPES = ("float32", "float16", "bfloat16")
# bf16 must beat fp32 by this factor in the micro-benchmark to be chosen (noise margin).
_BF16_MIN_SPEEDUP = 1.15


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(device: str) -> torch.device:
    """``auto`` = cuda > mps > cpu; an explicit device that is absent is an error."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("MMSEARCH_DEVICE=cuda but no CUDA device is available; use auto/cpu")
    if device == "mps" and not _mps_available():
        raise ModelLoadError("MMSEARCH_DEVICE=mps but MPS is not available; use auto/cpu")
    return torch.device(device)


@dataclass(frozen=True)
class DTypeChoice:
    """The dtype a model runs in and, in words, why."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def _cpuinfo(*keys: str) -> str | None:
    """The value of the first /proc/cpuinfo line whose key is one of ``keys`` (None: absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where unknown."""
    return set((_cpuinfo("flags", "Features") or "").split())


def cpu_model() -> str:
    """The CPU's model name (x86 ``model name``; elsewhere the platform's answer)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmsearch" / "cpu-bf16.json"


def _machine_key(flags: set[str]) -> str:
    import torch

    wanted = sorted(f for f in flags if "bf16" in f or f.startswith(("amx", "avx512")))
    return "|".join(
        [platform.machine(), cpu_model(), ",".join(wanted), torch.__version__]
        + [f"threads={torch.get_num_threads()}"]
    )


def measure_bf16_speedup(repeats: int = 8) -> float:
    """fp32 time / bf16 time of a Visualized-BGE-sized matmul (788 tokens x 768 -> 3072) on the
    CPU; > 1 means bf16 is faster. Takes about a second."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(788, 768, generator=gen)
    w = torch.randn(3072, 768, generator=gen)
    best = {}
    with torch.inference_mode():
        for dt in (torch.float32, torch.bfloat16):
            xx, ww = x.to(dt), w.to(dt)
            torch.nn.functional.linear(xx, ww)  # warm-up (oneDNN picks its kernel)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                torch.nn.functional.linear(xx, ww)
                times.append(time.perf_counter() - t0)
            best[dt] = min(times)
    return best[torch.float32] / best[torch.bfloat16]


def cached_bf16_speedup(flags: set[str]) -> tuple[float, bool]:
    """(speedup, came from the cache): measured once per machine (CPU, flags, torch, threads)
    and kept in ``$XDG_CACHE_HOME/mmsearch/cpu-bf16.json``."""
    path = _cache_path()
    key = _machine_key(flags)
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return float(cached["speedup"]), True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    speedup = measure_bf16_speedup()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # another process may read it
        tmp.write_text(json.dumps({"key": key, "speedup": round(speedup, 3)}) + "\n")
        tmp.replace(path)
    except OSError as e:  # a read-only home: measure again next time, no harm done
        logger.debug("cannot cache the bf16 micro-benchmark in %s: %s", path, e)
    return speedup, False


def _cpu_choice(flags: set[str]) -> DTypeChoice:
    import torch

    if "amx_bf16" in flags:
        return DTypeChoice(torch.bfloat16, "CPU has AMX bf16 tiles (amx_bf16)")
    partial = sorted(flags & {"avx512_bf16", "bf16"})
    if not partial:
        return DTypeChoice(
            torch.float32,
            "CPU has no native bf16 matrix support (no amx_bf16/avx512_bf16): bf16 would be "
            "emulated and slower",
        )
    speedup, from_cache = cached_bf16_speedup(flags)
    how = "cached micro-benchmark" if from_cache else "micro-benchmark"
    if speedup >= _BF16_MIN_SPEEDUP:
        return DTypeChoice(
            torch.bfloat16, f"CPU has {partial[0]} and bf16 ran {speedup:.1f}x fp32 in a {how}"
        )
    return DTypeChoice(
        torch.float32, f"CPU has {partial[0]} but bf16 ran only {speedup:.2f}x fp32 in a {how}"
    )


def choose_dtype(dtype: str, device: torch.device, *, flags: set[str] | None = None) -> DTypeChoice:
    """The dtype for ``device``: ``auto`` decides per machine (see the module doc), anything
    else is forced. ``flags`` overrides the CPU's flags (tests)."""
    import torch

    if dtype != "auto":
        if dtype not in _DTYPES:
            from rag.errors import ConfigError

            raise ConfigError(f"dtype must be auto or one of {', '.join(_DTYPES)}, got {dtype!r}")
        return DTypeChoice(getattr(torch, dtype), "forced by MMSEARCH_DTYPE")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return DTypeChoice(torch.bfloat16, "CUDA device supports bf16")
        return DTypeChoice(torch.float16, "CUDA device without bf16 support")
    if device.type == "mps":
        return DTypeChoice(torch.float16, "Apple GPU (MPS)")
    return _cpu_choice(cpu_flags() if flags is None else flags)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype of :func:`choose_dtype` (without the reason)."""
    return choose_dtype(dtype, device).dtype
