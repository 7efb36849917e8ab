"""Catalog text search: BM25 (keyword) and dense + BM25 (hybrid) on a catalog whose titles carry
what the random-weight model cannot see; filters in every mode; the text index added to an old
collection by `mmsearch reindex` (crash-safe); the adapter through plain LlamaIndex APIs."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.schema import ImageNode
from llama_index.core.vector_stores import MetadataFilter, MetadataFilters, VectorStoreQuery
from llama_index.core.vector_stores.types import VectorStoreQueryMode

from ingestion.pipeline import Ingestor
from ingestion.sources import catalog_items, folder_items
from rag.core.settings import Settings
from rag.errors import ConfigError, StoreError
from rag.factory import build_query_engine
from rag.store.milvus import CatalogStore, collection_info
from rag.store.reindex import reindex
from rag.store.text import catalog_text
from tests.conftest import run_cli
from tests.helpers import write_titled_catalog

N_ITEMS = 30


@pytest.fixture(scope="module")
def titled(tmp_path_factory: pytest.TempPathFactory, tiny_embedding):
    """A 30-item catalog with unique brand + model words in the titles, ingested once."""
    root = tmp_path_factory.mktemp("titled")
    cat, rows = write_titled_catalog(root, N_ITEMS)
    store = CatalogStore(
        uri=str(root / "m.db"),
        collection="titled",
        dim=tiny_embedding.dim,
        model_id=tiny_embedding.model_name,
    )
    Ingestor(embedding=tiny_embedding, store=store, batch_size=8).run(list(catalog_items(cat)))
    yield store, rows
    store.close()


def _engine(store: CatalogStore, emb: Any, **settings: Any):
    return build_query_engine(Settings(rerank=False, **settings), embedding=emb, store=store)


def _top1_rate(engine: Any, rows: list[dict], mode: str | None) -> float:
    hits = 0
    for row in rows:
        res = engine.search(text=row["query"], top_k=5, mode=mode)
        hits += bool(res.results) and res.results[0]["item_key"] == row["id"]
    return hits / len(rows)


def test_title_words_hybrid_and_keyword_find_the_item_dense_does_not(
    titled, tiny_embedding
) -> None:
    store, rows = titled
    engine = _engine(store, tiny_embedding)
    assert _top1_rate(engine, rows, "keyword") >= 0.9
    assert _top1_rate(engine, rows, "hybrid") >= 0.9
    assert _top1_rate(engine, rows, None) >= 0.9  # a text query defaults to hybrid here
    # the random-weight model cannot read titles: dense is near chance (1/30)
    assert _top1_rate(engine, rows, "dense") < 0.5
    res = engine.search(text=rows[3]["query"], top_k=3, mode="keyword")
    scores = [r["score"] for r in res.results]
    assert res.query["mode"] == "keyword" and scores[0] > 0 and scores == sorted(scores)[::-1]


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
def test_filters_apply_in_every_mode(titled, tiny_embedding, mode: str) -> None:
    store, rows = titled
    engine = _engine(store, tiny_embedding)
    for row in rows[:6]:
        other = next(c for c in ("cases", "shoes", "lamps") if c != row["category"])
        res = engine.search(text=row["query"], top_k=20, mode=mode, filters=[f"category={other}"])
        # (BM25 alone finds nothing: the query's words are the filtered-out item's own)
        assert {r["category"] for r in res.results} == ({other} if mode != "keyword" else set())
        assert row["id"] not in {r["item_key"] for r in res.results}
        price = row["price"]
        res = engine.search(
            text=row["query"],
            top_k=20,
            mode=mode,
            filters=[f"price>={price}", f"price<{price + 3}"],
        )
        assert {r["price"] for r in res.results} <= {price, price + 1, price + 2}
        if mode != "dense":
            assert res.results[0]["item_key"] == row["id"]


def test_adapter_through_plain_llamaindex(titled, tiny_embedding) -> None:
    """TEXT_SEARCH and HYBRID through LlamaIndex's own retriever and VectorStoreQuery."""
    store, rows = titled
    vs = store.vector_store
    index = VectorStoreIndex.from_vector_store(vs, embed_model=tiny_embedding)
    row = rows[7]
    for mode in ("text_search", "hybrid"):
        # LlamaIndex's hybrid knobs: similarity_top_k / sparse_top_k are the legs' depths,
        # hybrid_top_k the fused count
        retriever = index.as_retriever(
            vector_store_query_mode=mode, similarity_top_k=N_ITEMS, hybrid_top_k=3
        )
        hits = retriever.retrieve(row["query"])
        assert isinstance(hits[0].node, ImageNode)
        assert hits[0].node.metadata["item_key"] == row["id"]
        assert row["title"] in hits[0].node.get_content()  # the node's text is the title
    own = MetadataFilters(filters=[MetadataFilter(key="category", value=row["category"])])
    res = vs.query(
        VectorStoreQuery(
            query_str=f"{row['query']} matte",  # "matte": in every description
            similarity_top_k=30,
            mode=VectorStoreQueryMode.TEXT_SEARCH,
            filters=own,
        )
    )
    assert res.ids[0] == hits[0].node.node_id and len(res.ids) == N_ITEMS // 3
    assert {n.metadata["category"] for n in res.nodes} == {row["category"]}
    emb = tiny_embedding.get_query_embedding(row["query"])
    dense = vs.query(VectorStoreQuery(query_embedding=emb, similarity_top_k=5))

    # alpha (LlamaIndex's hybrid weight): 1 = the dense order, 0 = BM25 first
    def hybrid(alpha: float) -> Any:
        return vs.query(
            VectorStoreQuery(
                query_embedding=emb,
                query_str=row["query"],
                similarity_top_k=5,
                mode=VectorStoreQueryMode.HYBRID,
                alpha=alpha,
            )
        )

    assert hybrid(1.0).ids == dense.ids
    assert hybrid(0.0).nodes[0].metadata["item_key"] == row["id"]
    with pytest.raises(ConfigError, match="query mode 'mmr' is not supported"):
        vs.query(VectorStoreQuery(query_embedding=emb, mode=VectorStoreQueryMode.MMR))
    with pytest.raises(ConfigError, match="needs query_str"):
        vs.query(VectorStoreQuery(query_embedding=emb, mode=VectorStoreQueryMode.HYBRID))


def test_chat_mode_command(titled, tiny_embedding) -> None:
    from rag.app.chat import run_chat

    store, rows = titled
    out = io.StringIO()
    script = ["/mode keyword", rows[2]["query"], "/mode", "/mode fuzzy", "/mode auto", "/mode"]
    run_chat(_engine(store, tiny_embedding), io.StringIO("\n".join(script) + "\n"), out)
    text = out.getvalue()
    assert "mode keyword (last search: keyword)" in text
    assert "error: usage: /mode dense|keyword|hybrid|auto" in text
    assert "mode auto (last search: keyword)" in text
    assert rows[2]["title"] in text  # the table shows the title of the keyword hit


def test_catalog_text() -> None:
    meta = {"title": "Red case", "description": None, "tags": ["leather", ["slim"]], "n": 3}
    assert catalog_text(meta, ["title", "description", "tags", "n"]) == "Red case\nleather\nslim\n3"
    assert catalog_text({}, ["title"]) == ""
    long = catalog_text({"title": "é" * 40_000}, ["title"])  # 80,000 bytes
    assert len(long.encode()) <= 65_535 and set(long) == {"é"}


def test_reingest_is_idempotent_and_text_fields_are_kept(tmp_path: Path, tiny_embedding) -> None:
    cat, rows = write_titled_catalog(tmp_path, 6)
    store = CatalogStore(
        uri=str(tmp_path / "m.db"),
        collection="c",
        dim=tiny_embedding.dim,
        model_id=tiny_embedding.model_name,
    )

    def texts() -> dict[str, str]:
        res = store.client.query("c", filter="", output_fields=["id", "text"], limit=100)
        return {r["id"]: r["text"] for r in res}

    def ingest(fields: tuple[str, ...]):
        return Ingestor(embedding=tiny_embedding, store=store, text_fields=fields).run(
            list(catalog_items(cat))
        )

    assert store.use_text_fields(["title", "brand"]) == ("title", "brand")  # empty: recorded
    assert store.use_text_fields(None) == ("title", "brand")
    store.set_properties({"mmsearch.text_fields": "title,description"})
    assert ingest(store.use_text_fields(None)).added == 6
    first = texts()
    assert first[next(iter(first))].count("\n") == 1  # title + description
    rep = ingest(store.use_text_fields(None))
    assert (rep.added, rep.unchanged, rep.embedded) == (0, 6, 0) and texts() == first
    with pytest.raises(ConfigError, match=r"reindex --text-fields title,category"):
        store.use_text_fields(["title", "category"])
    # changing the fields is a reindex: in place (the index exists), nothing re-embedded
    report = reindex(store, ["title", "category"])
    assert (report.rebuilt, report.rows, report.with_text) == (False, 6, 6)
    assert store.text_fields == ("title", "category")
    assert {t.split("\n")[1] for t in texts().values()} == {"cases", "shoes", "lamps"}
    assert set(texts()) == set(first)  # same rows, same ids
    # items without text (a folder) index all the same, with empty text
    folder_rep = Ingestor(embedding=tiny_embedding, store=store).run(
        list(folder_items(tmp_path / "imgs"))
    )
    assert folder_rep.added == 6 and store.count() == 12
    assert sorted(texts().values()).count("") == 6
    store.close()


def _old_collection(uri: str, dim: int, model: str, n: int = 8) -> list[dict]:
    """A collection made before catalog text search (no text index), with titled rows."""
    store = CatalogStore(uri=uri, collection="old", dim=dim, model_id=model, text_index=False)
    rows = []
    for i in range(n):
        vec = [0.0] * dim
        vec[i % dim] = 1.0
        title = f"item{i} alpha{i} gadget"
        rows.append({"id": f"r{i}", "title": title, "embedding": vec})
        store.vector_store.add(
            [ImageNode(id_=f"r{i}", embedding=vec, metadata={"title": title, "item_key": str(i)})]
        )
    store.flush()
    assert not store.has_text_index
    store.close()
    return rows


class _CrashAt:
    """A MilvusClient stand-in that dies at the n-th call of ``method``, like a kill would."""

    def __init__(self, client: Any, method: str, nth: int = 1) -> None:
        self._client, self._method, self._left = client, method, nth

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name != self._method:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._left -= 1
            if self._left == 0:
                raise RuntimeError(f"killed in {name}")
            return attr(*args, **kwargs)

        return call


@pytest.mark.parametrize(
    ("method", "nth"),
    [("insert", 2), ("rename_collection", 1), ("rename_collection", 2), ("drop_collection", 1)],
)
def test_reindex_cut_short_at_any_step_loses_nothing(tmp_path: Path, method: str, nth: int):
    uri = str(tmp_path / "m.db")
    rows = _old_collection(uri, 4, "m", n=8)
    store = CatalogStore(uri=uri, collection="old", create=False)
    crashing = CatalogStore(
        uri=uri, collection="old", create=False, client=_CrashAt(store.client, method, nth)
    )
    with pytest.raises((RuntimeError, StoreError)):
        reindex(crashing, batch_size=5)
    # whatever state the crash left, the next open finds every row under the same name
    again = CatalogStore(uri=uri, collection="old", create=False, client=store.client)
    assert again.count() == 8
    assert sorted(again.client.list_collections()) == ["old"]
    hit = again.vector_store.query(VectorStoreQuery(query_embedding=[0, 1, 0, 0]))
    assert hit.ids[0] in ("r1", "r5")
    report = reindex(again, batch_size=5)  # and a second run completes it
    assert report.rows == 8 and again.has_text_index
    res = again.vector_store.query(
        VectorStoreQuery(query_str="alpha6", mode=VectorStoreQueryMode.TEXT_SEARCH)
    )
    assert res.ids == ["r6"] and rows[6]["title"] in res.nodes[0].get_content()
    store.close()


def test_old_collection_error_then_cli_reindex(
    tmp_path: Path, tiny_embedding, tiny_embed_dir: Path
) -> None:
    uri, emb = str(tmp_path / "m.db"), tiny_embedding
    rows = _old_collection(uri, emb.dim, emb.model_name, n=8)
    store = CatalogStore(uri=uri, collection="old", create=False)
    before = {
        r["id"]: r["embedding"]
        for r in store.client.query("old", filter="", output_fields=["id", "embedding"])
    }
    engine = _engine(store, emb)
    assert engine.search(text="alpha3", top_k=2).query["mode"] == "dense"  # still works
    with pytest.raises(ConfigError, match=r"needs a text index.*run `mmsearch reindex`"):
        engine.search(text="alpha3", mode="hybrid")
    store.close()
    env = {
        "MMSEARCH_MILVUS_URI": uri,
        "MMSEARCH_COLLECTION": "old",
        "MMSEARCH_EMBED_MODEL": str(tiny_embed_dir),
    }
    r = run_cli("search", "alpha3", "--mode", "keyword", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "error: search mode 'keyword' needs a text index" in (
        r.stderr
    )
    r = run_cli("reindex", "--json", env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert (data["rebuilt"], data["rows"], data["with_text"]) == (True, 8, 8)
    assert data["text_fields"] == ["title", "description"]
    store = CatalogStore(uri=uri, collection="old", create=False)
    after = {
        r["id"]: r["embedding"]
        for r in store.client.query("old", filter="", output_fields=["id", "embedding"])
    }
    assert after.keys() == before.keys()
    assert all(after[k] == pytest.approx(before[k]) for k in before)  # nothing re-embedded
    res = _engine(store, emb).search(text="alpha3", top_k=3)
    assert res.query["mode"] == "hybrid" and res.results[0]["title"] == rows[3]["title"]
    store.close()


def test_cli_search_mode_json_and_text_fields(tmp_path: Path, tiny_embed_dir: Path) -> None:
    cat, rows = write_titled_catalog(tmp_path, 6)
    env = {
        "MMSEARCH_MILVUS_URI": str(tmp_path / "m.db"),
        "MMSEARCH_EMBED_MODEL": str(tiny_embed_dir),
    }
    r = run_cli("ingest", str(cat), "--text-fields", "title,category", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["added"] == 6, r.stderr
    r = run_cli("search", "lamps", "--mode", "keyword", "--json", "--top-k", "6", env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["query"]["mode"] == "keyword"
    assert {x["category"] for x in data["results"]} == {"lamps"}  # category is text now
    info = collection_info(env["MMSEARCH_MILVUS_URI"], "", "mmsearch_images")
    assert info.text_index and info.text_fields == ["title", "category"]
