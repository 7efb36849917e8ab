"""The demo (`mmsearch demo`, `make run`): get a catalog and a model, ingest, run the leopard
query, draw the results, and say how to search the same index again."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingestion.pipeline import Progress
    from ingestion.service import IngestResult
    from rag.core.settings import Settings
    from rag.engine.query_engine import SearchResult

Say = Callable[[str], None]

SYNTHETIC_NOTE = (
    "synthetic demo: a random-weight model on generated images; it shows the pipeline "
    "working, not search quality"
)


@dataclass
class DemoPlan:
    """What the demo indexes and asks, and the settings that point at its index."""

    settings: Settings
    images: Path
    query_image: Path
    text: str
    overrides: dict[str, str]  # MMSEARCH_* values that differ from the user's settings


@dataclass
class DemoRun:
    """What the demo did."""

    ingest: IngestResult
    result: SearchResult
    grid_path: str


def prepare(settings: Settings, *, synthetic: bool, say: Say) -> DemoPlan:
    """Fetch (or generate) the catalog and the model; nothing is indexed yet."""
    if synthetic:
        return _prepare_synthetic(settings)
    from ingestion.datasets import amazon_subset_paths, pull_amazon_subset
    from rag.embedding.hub import default_dir, pull

    say("pulling the demo data set (900 Amazon product images)...")
    images, query = amazon_subset_paths(pull_amazon_subset(settings.data_dir))
    if settings.embed_model in ("base", "m3"):
        say(f"pulling the Visualized BGE {settings.embed_model} model...")
        pull(settings.embed_model, default_dir(settings.embed_model, settings.models_dir))
    return DemoPlan(settings, images, query, "a phone case with this", {})


def _prepare_synthetic(settings: Settings) -> DemoPlan:
    from ingestion.datasets import make_synthetic_catalog
    from rag.core.settings import load_settings
    from rag.embedding.checkpoint import MODEL_JSON
    from rag.embedding.tiny import make_embed_dir

    root = settings.data_dir / "demo-synthetic"
    images, query = make_synthetic_catalog(root / "images")
    model_dir = root / "model"
    if not (model_dir / MODEL_JSON).exists():
        make_embed_dir(model_dir)
    overrides = {
        "embed_model": str(model_dir),
        "milvus_uri": str(root / "milvus.db"),
        "collection": "demo_synthetic",
    }
    return DemoPlan(load_settings(**overrides), images, query, "a product like this", overrides)


def run(plan: DemoPlan, *, rerank: bool | None, progress: Progress | None, say: Say) -> DemoRun:
    """Ingest the plan's catalog, search once, save the results grid."""
    from ingestion.service import ingest_items, list_items
    from rag.app.display import save_result_grid
    from rag.factory import build_embedding, build_query_engine, open_store

    s = plan.settings
    say("loading the embedding model...")
    embedding = build_embedding(s)
    store = open_store(s, embedding)
    try:
        items = list_items([str(plan.images)])
        ingested = ingest_items(s, items, progress=progress, embedding=embedding, store=store)
        engine = build_query_engine(s, embedding=embedding, store=store, rerank=rerank)
        say("searching...")
        result = engine.search(text=plan.text, image=plan.query_image)
    finally:
        store.close()
    grid_path = save_result_grid(result, str(s.data_dir / "demo-results.png"))
    return DemoRun(ingested, result, grid_path)


def search_command(plan: DemoPlan) -> str:
    """The exact shell command that searches the demo's index again."""
    env = " ".join(
        f"MMSEARCH_{key.upper()}={shlex.quote(value)}" for key, value in plan.overrides.items()
    )
    cmd = f"mmsearch search {shlex.quote(plan.text)} --image {shlex.quote(str(plan.query_image))}"
    return f"{env} {cmd}" if env else cmd
