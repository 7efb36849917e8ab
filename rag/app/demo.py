"""The demo (`mmsearch demo`, `make run`): get a catalog and a model, ingest, run the leopard
query, draw the results, and say how to search the same index again.

On a CUDA GPU with >= 12 GB the demo reranks with the default Phi-3.5 Vision at its pinned
revision: it trusts that pinned remote code for the demo only (an override, like the synthetic
demo's), and says so in one line. Elsewhere the rerank is skipped with one line saying what to
set. A user who set MMSEARCH_VLM_TRUST_REMOTE_CODE either way, or configured another VLM, gets
exactly what they set.
"""

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

# Phi-3.5 Vision is ~8.3 GB in bf16, ~10 GB at its peak on a grid prompt (estimated). GB here
# is 10^9 bytes: a card sold as 12 GB has 12 GiB, and what torch reports of it (a little less)
# is still over 12e9 bytes.
DEMO_VLM_MIN_GPU_GB = 12.0


def cuda_memory_gb() -> float | None:
    """Total memory of the first CUDA GPU in GB (10^9 bytes), or None without a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return float(torch.cuda.get_device_properties(0).total_memory) / 1e9


@dataclass(frozen=True)
class DemoRerank:
    """The demo's rerank decision: trust the pinned VLM code (with the line that says so), or
    skip (with the detail the result shows), or neither (the user's settings decide)."""

    trust: bool = False
    note: str | None = None  # printed once, before ingestion
    skip_detail: str | None = None  # the result's `rerank skipped:` detail


def choose_rerank(
    settings: Settings,
    *,
    rerank: bool | None,
    gpu_memory_gb: Callable[[], float | None] | None = None,
) -> DemoRerank:
    """Whether the demo trusts the pinned Phi-3.5 Vision code: only where the user has left the
    VLM at its defaults (model, pinned revision, trust unset) and rerank on, and only on a CUDA
    GPU with >= ``DEMO_VLM_MIN_GPU_GB`` (``gpu_memory_gb``: :func:`cuda_memory_gb`); otherwise
    the user's settings decide."""
    from rag.core.settings import DEFAULT_VLM_MODEL, DEFAULT_VLM_REVISION

    untouched = (
        (settings.rerank if rerank is None else rerank)
        and settings.vlm_backend == "phi3v"
        and settings.vlm_model == DEFAULT_VLM_MODEL
        and settings.vlm_revision == DEFAULT_VLM_REVISION
        and "vlm_trust_remote_code" not in settings.model_fields_set
    )
    if not untouched:
        return DemoRerank()
    probe = gpu_memory_gb or cuda_memory_gb
    gb = probe() if settings.device in ("auto", "cuda") else None
    if gb is not None and gb >= DEMO_VLM_MIN_GPU_GB:
        return DemoRerank(
            trust=True,
            note=(
                f"rerank: this demo trusts the pinned remote code of {DEFAULT_VLM_MODEL}@"
                f"{DEFAULT_VLM_REVISION} (CUDA GPU, {gb:.0f} GB); turn it off with "
                "MMSEARCH_VLM_TRUST_REMOTE_CODE=false or --no-rerank"
            ),
        )
    if settings.device not in ("auto", "cuda"):
        found = f"MMSEARCH_DEVICE={settings.device}"
    elif gb is None:
        found = "no CUDA GPU here"
    else:
        found = f"this GPU has {gb:.1f} GB"
    return DemoRerank(
        skip_detail=(
            f"the demo runs Phi-3.5 Vision only on a CUDA GPU with >= {DEMO_VLM_MIN_GPU_GB:.0f} "
            f"GB ({found}); set MMSEARCH_VLM_TRUST_REMOTE_CODE=true to rerank anyway, or "
            "MMSEARCH_VLM_BACKEND=openai with MMSEARCH_VLM_BASE_URL"
        ),
    )


@dataclass
class DemoPlan:
    """What the demo indexes and asks, and the settings that point at its index."""

    settings: Settings
    images: Path
    query_image: Path
    text: str
    overrides: dict[str, str]  # MMSEARCH_* values that differ from the user's settings
    rerank: DemoRerank | None = None  # the demo's rerank decision (None: the user's settings)


@dataclass
class DemoRun:
    """What the demo did."""

    ingest: IngestResult
    result: SearchResult
    grid_path: str


def prepare(
    settings: Settings, *, synthetic: bool, say: Say, rerank: bool | None = None
) -> DemoPlan:
    """Fetch (or generate) the catalog and the model; nothing is indexed yet. ``rerank`` as
    for :func:`run`; the synthetic demo never adds a VLM to the user's settings."""
    if synthetic:
        return _prepare_synthetic(settings)
    from ingestion.datasets import amazon_subset_paths, pull_amazon_subset
    from rag.embedding.hub import default_dir, pull

    say("pulling the demo data set (900 Amazon product images)...")
    images, query = amazon_subset_paths(pull_amazon_subset(settings.data_dir))
    if settings.embed_model in ("base", "m3"):
        say(f"pulling the Visualized BGE {settings.embed_model} model...")
        pull(settings.embed_model, default_dir(settings.embed_model, settings.models_dir))
    choice = choose_rerank(settings, rerank=rerank)
    overrides: dict[str, str] = {}
    if choice.trust:  # for the demo only; the search command it prints repeats it
        settings = settings.model_copy(update={"vlm_trust_remote_code": True})
        overrides["vlm_trust_remote_code"] = "true"
    return DemoPlan(settings, images, query, "a phone case with this", overrides, choice)


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
        if plan.rerank and plan.rerank.skip_detail and engine.reranker is None:
            engine.no_reranker_detail = plan.rerank.skip_detail
        first_load = plan.rerank is not None and plan.rerank.trust
        say(
            "searching (the rerank loads Phi-3.5 Vision: ~8 GB, downloaded once)..."
            if first_load
            else "searching..."
        )
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
