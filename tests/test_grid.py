from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rag.rerank.grid import BACKGROUND, LABEL_BG, PLACEHOLDER, QUERY_BORDER, build_grid
from tests.helpers import make_image


def _has_color(img: Image.Image, color: tuple[int, int, int]) -> bool:
    return bool((np.asarray(img) == np.array(color)).all(axis=-1).any())


def test_nine_candidates_and_query_layout() -> None:
    grid = build_grid([make_image(i) for i in range(9)], query=make_image(99, (50, 200)))
    # query column + 3x3 tiles of 300 px, gaps included
    assert 1200 <= grid.width <= 1300 and 900 <= grid.height <= 960
    assert _has_color(grid, QUERY_BORDER) and _has_color(grid, LABEL_BG)
    # labels are large enough to survive a VLM's downscale to ~336 px per crop
    assert grid.width / 4 > 200


TILE, GAP = 300, 7  # build_grid's defaults: gap = max(4, tile // 40)


def _cell(i: int, cols: int) -> tuple[int, int]:
    r, c = divmod(i, cols)
    return GAP + c * (TILE + GAP), GAP + r * (TILE + GAP)


@pytest.mark.parametrize(("k", "cols", "rows"), [(1, 1, 1), (2, 2, 1), (5, 3, 2), (10, 4, 3)])
def test_any_k_is_laid_out_and_numbered(k: int, cols: int, rows: int) -> None:
    grid = build_grid([make_image(i, (30 + i * 7, 90)) for i in range(k)])
    assert grid.size == (cols * (TILE + GAP) + GAP, rows * (TILE + GAP) + GAP)
    assert not _has_color(grid, QUERY_BORDER)  # no query column without a query
    px = grid.load()
    for i in range(cols * rows):
        x, y = _cell(i, cols)
        if i < k:  # every candidate has its number label in the top-left corner
            assert px[x + 2, y + 2] == LABEL_BG, f"candidate {i + 1} has no label"
        else:  # the rest of the last row stays empty
            assert px[x + TILE // 2, y + TILE // 2] == BACKGROUND


def test_k_out_of_range() -> None:
    with pytest.raises(ValueError, match="1..25"):
        build_grid([])
    with pytest.raises(ValueError, match="1..25"):
        build_grid([make_image(0)] * 26)


def test_missing_and_broken_candidates_become_placeholders(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    blue = Image.new("RGB", (100, 100), (0, 0, 255))
    grid = build_grid([blue, None, str(bad), str(tmp_path / "gone.png")])
    px = grid.load()
    probes = [px[x + TILE - 20, y + TILE // 2] for x, y in (_cell(i, 2) for i in range(4))]
    assert probes[0] == (0, 0, 255)  # the real image is drawn
    assert probes[1:] == [PLACEHOLDER] * 3  # missing, unreadable, gone: placeholder tiles
