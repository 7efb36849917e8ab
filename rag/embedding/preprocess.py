"""Visualized BGE image preprocessing (the EVA-CLIP eval transform), on decoded RGB images."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(img: Image.Image, image_size: int = 224) -> torch.Tensor:
    """Bicubic shortest-side resize, center crop, to tensor, CLIP mean/std."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    img = F.resize(img, image_size, interpolation=InterpolationMode.BICUBIC)
    img = F.center_crop(img, [image_size, image_size])
    return F.normalize(F.to_tensor(img), CLIP_MEAN, CLIP_STD)
