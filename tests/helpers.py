"""Test helpers: generated images, a loopback HTTP server, ingest runners."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image


def make_image(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A distinct random image per seed (tiny models tell these apart)."""
    rng = np.random.RandomState(seed)
    base = rng.rand(4, 4, 3)
    arr = np.kron(base, np.ones((size[1] // 4 + 1, size[0] // 4 + 1, 1)))[: size[1], : size[0]]
    arr = arr * 0.7 + rng.rand(size[1], size[0], 3) * 0.3
    return Image.fromarray((arr * 255).astype("uint8"))


def write_images(folder: Path, n: int, start: int = 0, ext: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = folder / f"img_{i:03d}.{ext}"
        make_image(i).save(p)
        paths.append(p)
    return paths


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def http_server(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (an ephemeral port); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def lite_lock_held(uri: str) -> Iterator[None]:
    """Another process that holds the Milvus Lite database ``uri`` open while the block runs."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pymilvus import MilvusClient; "
            f"MilvusClient(uri={uri!r}); print('ready', flush=True); time.sleep(300)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        yield
    finally:
        holder.kill()
        holder.wait()


_NOUNS = ("case", "shoe", "lamp", "mug", "backpack", "watch")
_COLORS = ("red", "blue", "green", "black", "white")


def brand_words(n: int, seed: int = 7) -> list[str]:
    """``n`` distinct made-up words ("zorblat"): text only BM25 can match, never a model."""
    rng = np.random.RandomState(seed)
    words: list[str] = []
    while len(words) < n:
        w = "".join(rng.choice(list("bdfgklmnprstvz")) + rng.choice(list("aeiou")) for _ in "abc")
        if w not in words:
            words.append(w)
    return words


def write_titled_catalog(root: Path, n: int, *, start: int = 0) -> tuple[Path, list[dict]]:
    """A JSONL catalog of ``n`` generated images whose titles carry what the images do not: a
    unique brand and model code per item (plus a shared color and noun). Returns the catalog
    path and its rows (``query`` = the item's unique title words)."""
    import json

    paths = write_images(root / "imgs", n, start=start)
    brands = brand_words(start + n)[start:]
    rows = []
    for i, (p, brand) in enumerate(zip(paths, brands, strict=True), start=start):
        color, noun, model = _COLORS[i % 5], _NOUNS[i % 6], f"x{i * 37 % 1000:03d}"
        rows.append(
            {
                "id": f"sku-{i}",
                "image": str(p),
                "title": f"{brand.title()} {model.upper()} {color} {noun}",
                "description": f"A {color} {noun} with a matte finish.",
                "category": ("cases", "shoes", "lamps")[i % 3],
                "price": float(5 + i),
                "query": f"{brand} {model}",
            }
        )
    cat = root / "catalog.jsonl"
    cat.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "query"}) + "\n" for r in rows)
    )
    return cat, rows
