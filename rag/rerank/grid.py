"""The composite image: the query image marked in its own column, candidates numbered 1..k.

Pure PIL, in memory. Used for the VLM reranker (one image with all candidates) and for
``mmsearch search --grid``. Labels are sized relative to the tile so they stay legible after
a VLM downsizes the composite; a candidate that cannot be read becomes a placeholder tile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from rag.core.images import ImageInput, load_image
from rag.errors import ConfigError, InputImageError

BACKGROUND = (255, 255, 255)
QUERY_BORDER = (230, 120, 0)  # orange: the query stands apart from the numbered candidates
LABEL_BG = (200, 0, 0)
LABEL_FG = (255, 255, 255)
PLACEHOLDER = (215, 215, 215)
MAX_CANDIDATES = 25


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def _fit(img: Image.Image, box: int) -> Image.Image:
    """Letterbox ``img`` into a square of ``box`` pixels (any aspect ratio)."""
    fitted = ImageOps.contain(img, (box, box), method=Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (box, box), BACKGROUND)
    canvas.paste(fitted, ((box - fitted.width) // 2, (box - fitted.height) // 2))
    return canvas


def _placeholder(box: int, text: str = "missing") -> Image.Image:
    tile = Image.new("RGB", (box, box), PLACEHOLDER)
    draw = ImageDraw.Draw(tile)
    font = _font(max(12, box // 8))
    draw.line([(0, 0), (box, box)], fill=(170, 170, 170), width=3)
    draw.line([(0, box), (box, 0)], fill=(170, 170, 170), width=3)
    bbox = draw.textbbox((0, 0), text, font=font)
    draw.text(((box - bbox[2]) / 2, (box - bbox[3]) / 2), text, fill=(60, 60, 60), font=font)
    return tile


def _label(draw: ImageDraw.ImageDraw, x: int, y: int, text: str, size: int) -> None:
    font = _font(size)
    bbox = draw.textbbox((0, 0), text, font=font)
    w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
    pad = max(4, size // 5)
    draw.rectangle([x, y, x + w + 2 * pad, y + h + 2 * pad], fill=LABEL_BG)
    draw.text((x + pad - bbox[0], y + pad - bbox[1]), text, fill=LABEL_FG, font=font)


def build_grid(
    candidates: Sequence[ImageInput | None],
    query: ImageInput | None = None,
    *,
    tile: int = 300,
    columns: int | None = None,
) -> Image.Image:
    """Compose the candidates (numbered 1..k in reading order) and the marked query image.

    Args:
        candidates: images (path/PIL/bytes) or ``None`` for a missing one; 1 to 25.
        query: the query image, drawn in its own left column with an orange border.
        tile: pixel size of one square tile.
        columns: candidate columns (default: ceil(sqrt(k)), so 9 -> 3x3).
    """
    k = len(candidates)
    if not 1 <= k <= MAX_CANDIDATES:
        raise ConfigError(f"need 1..{MAX_CANDIDATES} candidates, got {k}")
    if tile < 64:
        raise ConfigError(f"tile must be >= 64 pixels, got {tile}")
    cols = columns or math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    gap = max(4, tile // 40)
    label_size = max(16, tile // 6)
    left = (tile + 3 * gap) if query is not None else 0
    width = left + cols * (tile + gap) + gap
    height = max(rows * (tile + gap) + gap, tile + 2 * gap + label_size * 2 if query else 0)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    if query is not None:
        try:
            q = _fit(load_image(query), tile - 2 * gap)
        except InputImageError:
            q = _placeholder(tile - 2 * gap, "query?")
        qx, qy = gap, gap
        draw.rectangle([qx, qy, qx + tile - 1, qy + tile - 1], fill=QUERY_BORDER)
        canvas.paste(q, (qx + gap, qy + gap))
        font = _font(label_size)
        bbox = draw.textbbox((0, 0), "QUERY", font=font)
        tx = qx + (tile - (bbox[2] - bbox[0])) // 2
        draw.text((tx, qy + tile + gap), "QUERY", fill=QUERY_BORDER, font=font)
        # A separator line keeps the query column visually apart from the results.
        sx = left - gap
        draw.line([(sx, 0), (sx, height)], fill=QUERY_BORDER, width=max(2, gap // 2))

    for i, cand in enumerate(candidates):
        r, c = divmod(i, cols)
        x = left + gap + c * (tile + gap)
        y = gap + r * (tile + gap)
        try:
            img = _fit(load_image(cand), tile) if cand is not None else _placeholder(tile)
        except InputImageError:
            img = _placeholder(tile, "unreadable")
        canvas.paste(img, (x, y))
        draw.rectangle([x, y, x + tile - 1, y + tile - 1], outline=(120, 120, 120), width=1)
        _label(draw, x, y, str(i + 1), label_size)
    return canvas
