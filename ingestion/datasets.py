"""Demo data sets: the 900-image Amazon Reviews 2023 subset of the original notebook, and a
small synthetic catalog for machines without internet access.

Downloads land in a temporary file and are extracted into a temporary folder that is moved into
place only when complete, so an interrupted pull leaves nothing half-written.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

from rag.errors import DownloadError

AMAZON_SUBSET_URL = (
    "https://github.com/milvus-io/bootcamp/releases/download/data/amazon_reviews_2023_subset.tar.gz"
)
AMAZON_SUBSET_DIR = "amazon_reviews_2023_subset"
MIN_IMAGES = 800  # the subset has 900 product images; fewer means a broken download


def amazon_subset_paths(root: Path) -> tuple[Path, Path]:
    """(images folder, leopard.jpg) inside an extracted subset."""
    leopards = sorted(root.rglob("leopard.jpg"))
    if not leopards:
        raise DownloadError(f"{root} has no leopard.jpg; remove it and pull again")
    images = [p for p in root.rglob("*.jpg") if p.name != "leopard.jpg"]
    folders = sorted({p.parent for p in images}, key=lambda p: -sum(1 for _ in p.glob("*.jpg")))
    return folders[0], leopards[0]


def pull_amazon_subset(data_dir: Path, *, timeout_s: float = 60.0) -> Path:
    """Download, verify and extract the subset under ``data_dir``; returns its folder."""
    import httpx

    dest = data_dir / AMAZON_SUBSET_DIR
    if dest.is_dir() and any(dest.rglob("leopard.jpg")):
        return dest
    data_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".pull-", dir=data_dir))
    try:
        archive = work / "subset.tar.gz"
        try:
            with (
                httpx.Client(follow_redirects=True, timeout=timeout_s) as client,
                client.stream("GET", AMAZON_SUBSET_URL) as resp,
            ):
                resp.raise_for_status()
                with open(archive, "wb") as fh:
                    for chunk in resp.iter_bytes():
                        fh.write(chunk)
        except httpx.HTTPError as e:
            raise DownloadError(
                f"cannot download the demo data set ({type(e).__name__}: {str(e)[:120]}); "
                f"offline? fetch {AMAZON_SUBSET_URL} elsewhere, extract it into {dest}, or run "
                "`mmsearch demo --synthetic`"
            ) from e
        extracted = work / "x"
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(extracted, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise DownloadError(f"the demo archive is corrupt ({e}); pull again") from e
        n = sum(1 for _ in extracted.rglob("*.jpg"))
        if n < MIN_IMAGES:
            raise DownloadError(f"the demo archive has {n} images, expected 900; pull again")
        amazon_subset_paths(extracted)
        if dest.exists():
            shutil.rmtree(dest)
        extracted.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def make_synthetic_catalog(folder: Path, n: int = 36) -> tuple[Path, Path]:
    """A small generated catalog (coloured patterns) plus a query image; for offline demos."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for i in range(n):
        path = folder / f"product_{i:03d}.png"
        if path.exists():
            continue
        base = rng.rand(4, 4, 3)
        arr = np.kron(base, np.ones((40, 40, 1)))
        Image.fromarray((arr * 255).astype("uint8")).save(path)
    query = folder.parent / "query.png"
    if not query.exists():
        Image.open(folder / "product_007.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
            query
        )
    return folder, query
