import asyncio
import json
from pathlib import Path

import pytest
from llama_index.core.schema import QueryBundle

from rag.core.settings import Settings
from rag.engine.query_engine import MMSearchQueryEngine
from rag.errors import ConfigError, EmptyCollectionError, EmptyQueryError, InputImageError
from rag.factory import build_query_engine
from rag.retrieval.retriever import ComposedRetriever
from rag.store.milvus import CatalogStore
from tests.conftest import run_cli
from tests.helpers import make_image


def _engine(store: CatalogStore, emb, top_k: int = 9) -> MMSearchQueryEngine:
    return build_query_engine(Settings(top_k=top_k, rerank=False), embedding=emb, store=store)


def _ordered(scores: list[float]) -> bool:
    return all(a >= b - 1e-6 for a, b in zip(scores, scores[1:], strict=False))


def test_each_query_kind_returns_k_ordered(catalog, tiny_embedding) -> None:
    store, folder, _ = catalog
    engine = _engine(store, tiny_embedding)
    img = folder / "img_003.png"
    for kwargs, kind in (
        ({"text": "red shoes"}, "text"),
        ({"image": img}, "image"),
        ({"image": str(img), "text": "a phone case with this"}, "composed"),
        ({"image": make_image(3)}, "image"),  # PIL input
        ({"image": img.read_bytes(), "text": "cheaper"}, "composed"),  # bytes input
    ):
        res = engine.search(**kwargs)
        assert res.query["kind"] == kind
        assert len(res.results) == 9
        scores = [r["score"] for r in res.results]
        assert _ordered(scores)
        assert [r["retrieval_rank"] for r in res.results] == list(range(1, 10))
        assert all(r["retrieval_score"] == r["score"] for r in res.results)


def test_image_query_finds_itself_first(catalog, tiny_embedding) -> None:
    store, folder, _ = catalog
    engine = _engine(store, tiny_embedding)
    for i in (0, 5, 11):
        res = engine.search(image=folder / f"img_{i:03d}.png", top_k=3)
        top = res.results[0]
        assert top["id"] and top["title"] == f"Product {i}"
        assert top["score"] == pytest.approx(1.0, abs=1e-4)
        assert res.results[1]["score"] < top["score"] - 1e-4


def test_filters_restrict_results(catalog, tiny_embedding) -> None:
    store, folder, _ = catalog
    engine = _engine(store, tiny_embedding)
    res = engine.search(text="anything", filters=["category=cases"], top_k=12)
    assert len(res.results) == 6 and {r["category"] for r in res.results} == {"cases"}
    res = engine.search(image=folder / "img_000.png", filters=["price<20", "price>=5"])
    assert sorted(r["price"] for r in res.results) == [5.0, 10.0, 15.0]
    res = engine.search(text="x", filters=["category=nothing"])
    assert res.results == []


def test_llamaindex_query_bundle_and_async(catalog, tiny_embedding) -> None:
    store, folder, _ = catalog
    engine = _engine(store, tiny_embedding, top_k=4)
    bundle = QueryBundle(query_str="a phone case with this", image_path=str(folder / "img_002.png"))
    resp = engine.query(bundle)
    assert len(resp.source_nodes) == 4
    assert resp.metadata["rerank"] == {"status": "skipped", "detail": "rerank disabled"}
    assert resp.metadata["query"]["kind"] == "composed"
    aresp = asyncio.run(engine.aquery(bundle))
    assert [n.node.node_id for n in aresp.source_nodes] == [
        n.node.node_id for n in resp.source_nodes
    ]
    r = asyncio.run(engine.asearch(text="red"))
    assert len(r.results) == 4
    retriever = ComposedRetriever(
        embedding=tiny_embedding, vector_store=store.vector_store, top_k=2
    )
    assert len(retriever.retrieve(QueryBundle(query_str="red"))) == 2


def test_json_shape(catalog, tiny_embedding) -> None:
    store, folder, _ = catalog
    data = _engine(store, tiny_embedding).search(text="red", top_k=2).to_dict()
    assert set(data) >= {"query", "results", "caption", "reason", "rerank"}
    assert set(data["results"][0]) >= {"rank", "id", "image_path", "score", "retrieval_rank"}
    assert data["rerank"] == {"status": "skipped", "detail": "rerank disabled"}
    json.dumps(data)  # serialisable


def test_in_memory_query_image_reports_no_path(catalog, tiny_embedding) -> None:
    store, folder, _ = catalog
    engine = _engine(store, tiny_embedding)
    pil = engine.search(image=make_image(3, (96, 72)), top_k=2)
    assert pil.query["image"] == "<PIL image 96x72>"
    data = (folder / "img_003.png").read_bytes()
    raw = engine.search(image=data, text="like this", top_k=2)
    assert raw.query["image"] == f"<{len(data)} bytes>"
    by_path = engine.search(image=folder / "img_003.png", top_k=2)
    assert by_path.query["image"] == str(folder / "img_003.png")
    # the same picture by path, bytes or PIL is the same query
    assert [r["id"] for r in engine.search(image=data, top_k=2).results] == [
        r["id"] for r in by_path.results
    ]


def test_query_image_decoded_once_per_search(
    catalog, tiny_embedding, monkeypatch, tmp_path: Path
) -> None:
    """Retriever, caption, grid: one decode of the query image for the whole search."""
    from rag.core import images
    from rag.rerank.postprocessor import VLMReranker
    from tests.test_reranker import FakeVLM

    store, _, _ = catalog
    query = str(tmp_path / "query.png")  # not in the catalog, so never a candidate
    make_image(99).save(query)
    opened: list[str] = []
    real = images._open

    def counting(data: bytes, label: str):
        opened.append(label)
        return real(data, label)

    monkeypatch.setattr(images, "_open", counting)
    vlm = FakeVLM(["a caption", "[1,2,3,4,5,6,7,8,9]", "a reason"])
    engine = build_query_engine(
        Settings(), embedding=tiny_embedding, store=store, reranker=VLMReranker(vlm=vlm)
    )
    res = engine.search(text="like this", image=query)
    assert res.rerank["status"] == "ok" and len(vlm.calls) == 3
    assert opened.count(query) == 1
    assert len(opened) == 1 + 9  # the query once, each candidate once (for the grid)


def test_errors(catalog, tiny_embedding, tmp_path: Path, milvus_uri: str) -> None:
    store, _, _ = catalog
    engine = _engine(store, tiny_embedding)
    with pytest.raises(EmptyQueryError):
        engine.search(text="  ")
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    with pytest.raises(InputImageError, match="bad.png: not an image"):
        engine.search(image=bad)
    with pytest.raises(InputImageError, match="no such file"):
        engine.search(image=tmp_path / "missing.png", text="x")
    empty = CatalogStore(
        uri=milvus_uri,
        collection="empty_one",
        dim=tiny_embedding.dim,
        model_id=tiny_embedding.model_name,
        client=store.client,
    )
    with pytest.raises(EmptyCollectionError, match="is empty"):
        _engine(empty, tiny_embedding).search(text="x")


def test_cli_search(
    catalog, tiny_embedding, tiny_embed_dir: Path, milvus_uri: str, tmp_path: Path
) -> None:
    store, folder, _ = catalog
    expected = _engine(store, tiny_embedding).search(
        text="a phone case with this", image=folder / "img_004.png", top_k=5
    )
    store.close()
    env = {"MMSEARCH_MILVUS_URI": milvus_uri, "MMSEARCH_EMBED_MODEL": str(tiny_embed_dir)}
    grid = tmp_path / "out" / "grid.png"
    res = run_cli(
        "search",
        "a phone case with this",
        "--image",
        str(folder / "img_004.png"),
        "--json",
        "--top-k",
        "5",
        "--grid",
        str(grid),
        env=env,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["query"]["kind"] == "composed"
    # the CLI answers exactly what the Python API answers for the same query
    assert [r["id"] for r in data["results"]] == [r["id"] for r in expected.results]
    assert [r["score"] for r in data["results"]] == pytest.approx(
        [r["score"] for r in expected.results], abs=1e-5
    )
    # Default settings ask for Phi-3 Vision, whose remote code is not opted in: the rerank is
    # skipped and the detail says how to configure it.
    assert data["rerank"]["status"] == "skipped"
    assert "MMSEARCH_VLM_TRUST_REMOTE_CODE" in data["rerank"]["detail"]
    assert grid.is_file() and data["grid"] == str(grid)
    table = run_cli("search", "--image", str(folder / "img_004.png"), "--no-rerank", env=env)
    assert table.returncode == 0 and "Product 4" in table.stdout.splitlines()[1]
    for args, msg in (
        ((), "empty query"),
        (("--image", str(tmp_path / "nope.png")), "no such file"),
        (("x", "--filter", "price<cheap"), "is not a number"),
    ):
        r = run_cli("search", *args, env=env)
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr
    empty_env = {**env, "MMSEARCH_COLLECTION": "never_made"}
    r = run_cli("search", "x", env=empty_env)
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_results_table_fits_a_terminal(
    catalog, tiny_embedding, tmp_path: Path, monkeypatch
) -> None:
    """No title: the table shows the file name (or a path relative to the working directory),
    never a long absolute path that wraps in an 80-column terminal."""
    import io

    from rich.console import Console

    from rag.app.display import print_results, short_path

    store, folder, _ = catalog
    res = _engine(store, tiny_embedding).search(image=folder / "img_002.png", top_k=3)
    for node in res.nodes:
        node.node.metadata.pop("title")
    out = io.StringIO()
    monkeypatch.chdir(tmp_path / "milvus")  # outside the image folder
    print_results(res, Console(file=out, width=80))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "img_002.png" in lines[1] and str(folder) not in out.getvalue()
    monkeypatch.chdir(tmp_path)  # inside: a relative path
    assert short_path(str(folder / "img_002.png")) == "imgs/img_002.png"
    assert short_path("https://example.com/a.png") == "https://example.com/a.png"


def test_search_mode_is_validated_and_reported(catalog, tiny_embedding) -> None:
    store, folder, _ = catalog
    engine = _engine(store, tiny_embedding)
    # the catalog has titles: text-only queries default to hybrid, image queries to dense;
    # the JSON reports the mode that ran
    assert engine.search(text="red", top_k=2).query["mode"] == "hybrid"
    assert engine.search(image=folder / "img_001.png", top_k=2).query["mode"] == "dense"
    assert engine.search(text="x", image=folder / "img_001.png", top_k=2).query["mode"] == "dense"
    assert engine.search(text="red", top_k=2, mode="dense").query["mode"] == "dense"
    assert engine.search(text="red", top_k=2, mode="keyword").query["mode"] == "keyword"
    with pytest.raises(ConfigError, match="search mode must be one of dense, keyword, hybrid"):
        engine.search(text="red", mode="fuzzy")
    with pytest.raises(ConfigError, match="give a query text too"):
        engine.search(image=folder / "img_001.png", mode="keyword")
