"""The search page in a real headless Chromium (Debian's `chromium`, driven by Playwright) against
a real server on a loopback port: type, upload, search, "more like this", a screenshot.

Skipped, with the reason in the test summary, where Chromium or Playwright is missing
(`.ci/run` installs Chromium, so CI runs it). ``MMSEARCH_SCREENSHOT=docs/serve-page.png``
also writes the screenshot there (the README's picture).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image, ImageDraw

from rag.app.server import ServerConfig, background_server, create_app
from rag.core.settings import Settings
from rag.factory import build_query_engine
from rag.rerank.postprocessor import VLMReranker

CHROMIUM = shutil.which("chromium") or next(
    (p for p in ("/usr/bin/chromium", "/usr/lib/chromium/chromium") if Path(p).exists()), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium: install Debian's `chromium` (apt-get install chromium; .ci/run does)",
)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)

COLORS = [
    ("Red", (205, 52, 48)),
    ("Orange", (236, 133, 40)),
    ("Yellow", (236, 200, 52)),
    ("Green", (64, 150, 80)),
    ("Teal", (40, 150, 150)),
    ("Blue", (50, 90, 190)),
]
SHAPES = [("mug", "ellipse"), ("phone case", "rounded"), ("sneaker", "polygon")]


def _product(color: tuple[int, int, int], shape: str, seed: int) -> Image.Image:
    """A simple flat product picture (a shape in a color on a light background)."""
    img = Image.new("RGB", (320, 320), (246 - seed % 3 * 6, 244, 240))
    draw = ImageDraw.Draw(img)
    dark = tuple(max(c - 60, 0) for c in color)
    if shape == "ellipse":
        draw.ellipse((70, 80, 250, 260), fill=color, outline=dark, width=6)
        draw.arc((225, 130, 295, 210), -90, 90, fill=dark, width=14)
    elif shape == "rounded":
        draw.rounded_rectangle((105, 40, 215, 280), radius=26, fill=color, outline=dark, width=6)
        draw.ellipse((120, 55, 150, 85), fill=dark)
    else:
        draw.polygon(
            [(40, 230), (80, 150), (170, 150), (280, 210), (285, 250), (40, 250)], fill=color
        )
        draw.line([(40, 250), (285, 250)], fill=dark, width=10)
    return img


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_embedding, tiny_vlm) -> Iterator[Any]:
    from ingestion.pipeline import Ingestor
    from ingestion.sources import catalog_items
    from rag.store.milvus import CatalogStore

    root = tmp_path_factory.mktemp("page")
    (root / "imgs").mkdir()
    rows = []
    for i in range(18):
        (name, rgb), (noun, shape) = COLORS[i % 6], SHAPES[(i // 6) % 3]
        path = root / "imgs" / f"p{i:02d}.png"
        _product(rgb, shape, i).save(path)
        category = {"mug": "Kitchen", "phone case": "Cell_Phones", "sneaker": "Shoes"}[noun]
        rows.append(
            {
                "id": f"sku-{i}",
                "image": str(path),
                "title": f"{name} {noun}",
                "category": category,
                "price": round(9.5 + 3.25 * i, 2),
            }
        )
    (root / "catalog.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    store = CatalogStore(
        uri=str(root / "milvus" / "page.db"),
        collection="mmsearch_images",
        dim=tiny_embedding.dim,
        model_id=tiny_embedding.model_name,
    )
    Ingestor(embedding=tiny_embedding, store=store, batch_size=6).run(
        list(catalog_items(root / "catalog.jsonl"))
    )
    engine = build_query_engine(
        Settings(data_dir=root / "data"),
        embedding=tiny_embedding,
        store=store,
        reranker=VLMReranker(vlm=tiny_vlm),
        rerank=True,
    )
    query = root / "query.png"
    _product((200, 60, 60), "rounded", 99).save(query)
    app = create_app(engine, ServerConfig(thumb_dir=root / "thumbs"))
    with background_server(app) as base:
        yield SimpleNamespace(base=base, query=query)
    store.close()


# Every thumbnail of the grid really loaded (a decoded image) from /api/images/{id}/thumb.
THUMBS_LOADED = (
    "() => [...document.querySelectorAll('#results img')]"
    ".every(i => i.complete && i.naturalWidth > 0)"
)


def _card_ids(page: Any) -> list[str]:
    return list(page.eval_on_selector_all("#results .card", "els => els.map(e => e.dataset.id)"))


def test_search_page_in_chromium(site: Any, tmp_path: Path) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            _flow(page, site, tmp_path)
        finally:
            browser.close()


def _flow(page: Any, site: Any, tmp_path: Path) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(site.base + "/")
    assert page.title() == "mmsearch"
    # Enter with nothing to search for: an error state, no request.
    page.press("#q", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "Type what you are looking for" in page.text_content("#error")

    # Type a query, upload an image, press Enter (keyboard): the grid appears.
    page.fill("#q", "a phone case like this")
    page.set_input_files("#image-file", str(site.query))
    page.wait_for_selector("#image-preview:not([hidden])")
    assert page.text_content("#preview-label") == "query.png"
    with page.expect_response("**/api/search") as first:
        page.press("#q", "Enter")
    assert first.value.status == 200
    page.wait_for_selector("#results .card")
    assert page.is_hidden("#error")
    ids = _card_ids(page)
    assert len(ids) == 9 and len(set(ids)) == 9
    assert page.text_content("#results .card .rank") == "#1"
    first_title = page.text_content("#results .card .title")
    assert first_title and first_title.split()[0] in {c for c, _ in COLORS}
    assert "$" in page.text_content("#results .card .facts")
    assert page.text_content("#results .card .score").startswith("score ")
    info = page.inner_text("#rerank-info")
    assert info.startswith("Rerank") and ("ok" in info or "repaired" in info)
    assert "Query image" in info and "Why #1" in info  # the VLM's caption and reason
    page.wait_for_function(THUMBS_LOADED)
    assert "image query.png" in page.text_content("#summary")

    # "More like this" on result 3: its image becomes the query image, the text stays.
    third = ids[2]
    with page.expect_request("**/api/search") as req:
        page.click("#results .card:nth-child(3) .more")
    body = req.value.post_data or ""
    assert f'name="image_id"\r\n\r\n{third}' in body and "a phone case like this" in body
    page.wait_for_function(
        "() => document.querySelector('#summary').textContent.includes('+ result #3')"
    )
    assert len(_card_ids(page)) == 9 and _card_ids(page) != ids
    assert page.text_content("#preview-label").startswith("result #3")
    assert page.evaluate("document.activeElement.id") == "results-heading"  # focus follows
    assert page.input_value("#q") == "a phone case like this"

    # Options by keyboard-reachable controls: rerank off, top-k 6, a filter; Enter searches.
    page.click("details.options summary")
    page.uncheck("#rerank")
    page.fill("#top-k", "6")
    page.fill("#filters", "price<60")
    page.press("#q", "Enter")
    page.wait_for_function("() => document.querySelectorAll('#results .card').length === 6")
    page.wait_for_function(
        "() => document.querySelector('#rerank-info').textContent.includes('rerank disabled')"
    )
    prices = page.eval_on_selector_all(
        "#results .facts", "els => els.map(e => parseFloat(e.textContent.slice(1)))"
    )
    assert prices and all(p < 60 for p in prices)
    page.wait_for_function(THUMBS_LOADED)
    shot = tmp_path / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("MMSEARCH_SCREENSHOT"):  # flat colours: a 256-colour PNG is a third
        with Image.open(shot) as img:
            img.convert("RGB").quantize(256).save(os.environ["MMSEARCH_SCREENSHOT"], optimize=True)

    # A server-side error is shown as one line, and the page stays usable.
    page.click("#clear-image")
    page.fill("#image-url", "http://127.0.0.1:9/x.png")
    page.press("#q", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "refused" in page.text_content("#error")
    assert not errors, errors
