"""The quality part of benchmarks/hybrid.py: top-1 rates per search mode on generated catalogs
searched with the tiny random-weight model (the mechanics of the fusion; see hybrid.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RANKERS: dict[str, tuple[str, dict[str, Any]]] = {
    "rrf_k60": ("RRFRanker", {"k": 60}),
    "weighted_alpha0.5": ("WeightedRanker", {"weights": [0.5, 0.5]}),
    "weighted_alpha0.3": ("WeightedRanker", {"weights": [0.3, 0.7]}),
}
# Mild tints: the tiny model still tells the base pictures apart (variants of one picture are
# each other's nearest neighbours ~70 % of the time), but not which color a variant has.
COLORS = {
    "red": (1.0, 0.9, 0.9),
    "blue": (0.9, 0.9, 1.0),
    "green": (0.9, 1.0, 0.9),
    "yellow": (1.0, 1.0, 0.9),
    "gray": (0.95, 0.95, 0.95),
}


def _top1(engine: Any, queries: list[dict[str, Any]], mode: str) -> float:
    """Share of queries whose first result (the query's own image excluded) is the target."""
    hits = 0
    for q in queries:
        res = engine.search(text=q["text"], image=q.get("image"), top_k=6, mode=mode)
        keys = [r["item_key"] for r in res.results if r["item_key"] != q.get("exclude")]
        hits += bool(keys) and keys[0] in q["targets"]
    return round(hits / len(queries), 3)


def _modes(engine: Any, store: Any, queries: list[dict[str, Any]], text_modes: bool) -> Any:
    out: dict[str, float] = {"dense": _top1(engine, queries, "dense")}
    if text_modes:
        out["keyword"] = _top1(engine, queries, "keyword")
    for name, (ranker, params) in RANKERS.items():
        store.vector_store.set_hybrid_ranker(ranker, params)
        out[f"hybrid_{name}"] = _top1(engine, queries, "hybrid")
    store.vector_store.set_hybrid_ranker("RRFRanker", {"k": 60})
    # legs only top_k deep (as upstream MilvusVectorStore queries them) instead of 50
    engine.retriever.hybrid_candidates = 1
    out["hybrid_rrf_k60_legs_top_k_deep"] = _top1(engine, queries, "hybrid")
    engine.retriever.hybrid_candidates = 50
    return out


def _open(root: Path, emb: Any, name: str, catalog: Path) -> tuple[Any, Any]:
    from ingestion.pipeline import Ingestor
    from ingestion.sources import catalog_items
    from rag.core.settings import Settings
    from rag.factory import build_query_engine
    from rag.store.milvus import CatalogStore

    store = CatalogStore(
        uri=str(root / f"{name}.db"), collection=name, dim=emb.dim, model_id=emb.model_name
    )
    Ingestor(embedding=emb, store=store).run(list(catalog_items(catalog)))
    return store, build_query_engine(Settings(rerank=False), embedding=emb, store=store)


def text_queries(root: Path, emb: Any, n: int = 60) -> dict[str, Any]:
    """(a) unique title words ("kemogu x000"); (b) a unique word plus the shared noun."""
    from tests.helpers import write_titled_catalog

    cat, rows = write_titled_catalog(root / "titled", n)
    store, engine = _open(root, emb, "titled", cat)
    unique = [{"text": r["query"], "targets": {r["id"]}} for r in rows]
    partial = [
        {"text": f"{r['query'].split()[0]} {r['title'].split()[-1]}", "targets": {r["id"]}}
        for r in rows
    ]
    out = {
        "items": n,
        "unique_title_words": _modes(engine, store, unique, True),
        "unique_word_plus_shared_noun": _modes(engine, store, partial, True),
    }
    store.close()
    return out


def _variant_catalog(root: Path, groups: int) -> tuple[Path, dict[tuple[int, str], str]]:
    """``groups`` base pictures x 5 color tints; the title names the color, the brand and the
    product. Returns the catalog and (group, color) -> image path."""
    import json

    import numpy as np
    from PIL import Image

    from tests.helpers import brand_words, make_image

    (root / "variants").mkdir(parents=True, exist_ok=True)
    brands, paths, lines = brand_words(groups, seed=11), {}, []
    for g in range(groups):
        base = np.asarray(make_image(500 + g, (128, 96)), dtype="float32")
        for color, tint in COLORS.items():
            path = root / "variants" / f"g{g}_{color}.png"
            Image.fromarray((base * np.array(tint)).clip(0, 255).astype("uint8")).save(path)
            paths[(g, color)] = str(path)
            title = f"{brands[g].title()} {color} {('tote', 'vase', 'lamp', 'mug')[g % 4]}"
            lines.append(json.dumps({"id": f"g{g}-{color}", "image": str(path), "title": title}))
    cat = root / "variants.jsonl"
    cat.write_text("\n".join(lines) + "\n")
    return cat, paths


def composed_queries(root: Path, emb: Any, groups: int = 10) -> dict[str, Any]:
    """(c) reference image + "in <color>" -> the same product in that color; "not <color>"
    -> the same product in any other color (a negation BM25 cannot read: it matches the
    color); and a control instruction no title contains. The reference is excluded from its
    results, as CIRR does."""
    cat, paths = _variant_catalog(root, groups)
    store, engine = _open(root, emb, "variants", cat)
    names = list(COLORS)
    attr, negation, control = [], [], []
    for g in range(groups):
        for i, src in enumerate(names[:4]):
            dst = names[(i + 1 + g) % len(names)]
            if dst == src:
                continue
            ref = {"image": paths[(g, src)], "exclude": f"g{g}-{src}"}
            others = {f"g{g}-{c}" for c in names if c != src}
            attr.append({**ref, "text": f"in {dst}", "targets": {f"g{g}-{dst}"}})
            negation.append({**ref, "text": f"not {src}", "targets": others})
            control.append({**ref, "text": "a similar one please", "targets": {f"g{g}-{dst}"}})
    out = {
        "queries": len(attr),
        "instruction_names_a_title_attribute": _modes(engine, store, attr, False),
        "instruction_negates_a_title_attribute": _modes(engine, store, negation, False),
        "control_instruction_in_no_title": _modes(engine, store, control, False),
    }
    store.close()
    return out


def quality(root: Path) -> dict[str, Any]:
    from rag.embedding.multimodal import VisualizedBGEEmbedding
    from rag.embedding.tiny import make_embed_dir

    emb = VisualizedBGEEmbedding.from_local(make_embed_dir(root / "embed"), device="cpu")
    return {
        "model": "tiny random weights (sees no meaning in text)",
        "text": text_queries(root, emb),
        "composed": composed_queries(root, emb),
    }
