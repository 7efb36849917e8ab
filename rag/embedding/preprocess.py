"""Visualized BGE image preprocessing (the EVA-CLIP eval transform), on decoded RGB images.

Split in two so the model's device does the arithmetic: :func:`preprocess_uint8` (resize +
center crop, on CPU decode workers) keeps pixels as uint8 — a quarter of the bytes to queue,
pin and copy — and :func:`normalize` turns a batch into the model's input on its device.
:func:`preprocess` is both in one (the reference transform, same values).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess_uint8(img: Image.Image, image_size: int = 224) -> torch.Tensor:
    """Bicubic shortest-side resize and center crop -> a uint8 tensor (3, size, size)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    img = F.resize(img, image_size, interpolation=InterpolationMode.BICUBIC)
    img = F.center_crop(img, [image_size, image_size])
    return F.pil_to_tensor(img)


def normalize(pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 pixels (N, 3, H, W) on any device -> CLIP mean/std normalised ``dtype`` there
    (computed in float32, then cast). Float input is taken as already normalised."""
    import torch

    if pixels.dtype != torch.uint8:
        return pixels.to(dtype)
    mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
    return ((pixels.float() / 255.0 - mean) / std).to(dtype)


def preprocess(img: Image.Image, image_size: int = 224) -> torch.Tensor:
    """Bicubic shortest-side resize, center crop, to tensor, CLIP mean/std (float32)."""
    import torch

    return normalize(preprocess_uint8(img, image_size).unsqueeze(0), torch.float32)[0]
