"""Shared fixtures: Milvus Lite in tmp_path, the tiny random-weight model kit, generated images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MMSEARCH = [sys.executable, "-m", "rag.app.cli"]

# Tests never reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def milvus_uri(tmp_path: Path) -> str:
    return str(tmp_path / "milvus" / "test.db")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MMSEARCH_* variables leak in from the developer's shell; cwd is an empty tmp dir."""
    for key in list(os.environ):
        if key.startswith("MMSEARCH_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the real `mmsearch` CLI in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MMSEARCH_")}
    full_env["PYTHONPATH"] = str(REPO)
    # fp32 everywhere unless a test asks: results then match the in-process fixtures exactly on
    # every machine (dtype=auto picks bf16 on some CPUs; tests/test_dtype.py covers that).
    full_env["MMSEARCH_DTYPE"] = "float32"
    full_env.update(env or {})
    return subprocess.run(
        [*MMSEARCH, *args],
        env=full_env,
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUTDIR of scripts/make_tiny_models.py (embed/ and, once the VLM lands, vlm/)."""
    from rag.embedding.tiny import make_embed_dir

    out = tmp_path_factory.mktemp("kit")
    make_embed_dir(out / "embed")
    return out


@pytest.fixture(scope="session")
def tiny_embed_dir(tiny_kit: Path) -> Path:
    return tiny_kit / "embed"


@pytest.fixture(scope="session")
def tiny_embedding(tiny_embed_dir: Path):
    from rag.embedding.multimodal import VisualizedBGEEmbedding

    return VisualizedBGEEmbedding.from_local(tiny_embed_dir, device="cpu", dtype="float32")


@pytest.fixture
def catalog(tmp_path: Path, milvus_uri: str, tiny_embedding):
    """A Milvus Lite collection of 12 generated images (with metadata) ingested by the tiny
    model; yields (store, folder, catalog_path)."""
    import json

    from ingestion.pipeline import Ingestor
    from ingestion.sources import catalog_items
    from rag.store.milvus import CatalogStore
    from tests.helpers import write_images

    folder = tmp_path / "imgs"
    paths = write_images(folder, 12)
    rows = [
        {
            "id": f"sku-{i}",
            "image": str(p),
            "title": f"Product {i}",
            "category": "cases" if i % 2 else "shoes",
            "price": float(5 * i),
        }
        for i, p in enumerate(paths)
    ]
    cat = tmp_path / "catalog.jsonl"
    cat.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    store = CatalogStore(
        uri=milvus_uri,
        collection="mmsearch_images",
        dim=tiny_embedding.dim,
        model_id=tiny_embedding.model_name,
    )
    Ingestor(embedding=tiny_embedding, store=store, batch_size=6).run(list(catalog_items(cat)))
    yield store, folder, cat
    store.close()


@pytest.fixture(scope="session")
def tiny_vlm_dir(tiny_kit: Path) -> Path:
    from rag.rerank.tiny_vlm import make_vlm_dir

    return make_vlm_dir(tiny_kit / "vlm")


@pytest.fixture(scope="session")
def tiny_vlm(tiny_vlm_dir: Path):
    from rag.rerank.backends.hf import TransformersVLM

    return TransformersVLM.from_pretrained(tiny_vlm_dir, device="cpu")
