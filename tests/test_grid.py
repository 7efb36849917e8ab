from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rag.grid import LABEL_BG, QUERY_BORDER, build_grid
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


@pytest.mark.parametrize("k", [1, 2, 5, 10, 16, 25])
def test_any_k(k: int) -> None:
    grid = build_grid([make_image(i, (30 + i * 7, 90)) for i in range(k)])
    assert grid.width > 0 and grid.height > 0
    assert not _has_color(grid, QUERY_BORDER)  # no query column without a query


def test_k_out_of_range() -> None:
    with pytest.raises(ValueError, match="1..25"):
        build_grid([])
    with pytest.raises(ValueError, match="1..25"):
        build_grid([make_image(0)] * 26)


def test_missing_and_broken_candidates_become_placeholders(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    grid = build_grid([make_image(0), None, str(bad), str(tmp_path / "gone.png")])
    assert grid.size[0] > 0  # drawn, not raised
