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
