"""Which torch device and dtype a model runs on: one neutral place for the embedding and the VLM."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rag.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

_DTYPES = ("float32", "float16", "bfloat16")


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


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` = bf16 on CUDA with bf16 support, fp16 on other GPUs, fp32 on CPU."""
    import torch

    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        from rag.errors import ConfigError

        raise ConfigError(f"dtype must be auto or one of {', '.join(_DTYPES)}, got {dtype!r}")
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
