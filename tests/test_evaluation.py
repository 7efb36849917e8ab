"""Evaluation: metric functions against hand-computed values, the official CIRR / FashionIQ file
formats (rows laid out exactly as the data sets ship them), the runner's report with a fake
engine, and end-to-end runs through the real engine (tiny model, Milvus Lite) and the CLI."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rag.core.settings import Settings
from rag.errors import ConfigError, EvalInputError, MMSearchError
from rag.evaluation import gallery as gallery_mod
from rag.evaluation.metrics import (
    cirr_metrics,
    fiq_mean,
    fiq_metrics,
    hit_at,
    metrics_for,
    mrr_at,
    ndcg_at,
    recall_at,
    subset_ranking,
)
from rag.evaluation.prepare import Prepared, match_splits, prepare, read_sets
from rag.evaluation.protocols import PROTOCOLS
from rag.evaluation.queries import read_queries, read_query_set
from rag.evaluation.report import summary, table
from rag.evaluation.runner import evaluate, parse_modes
from rag.factory import build_query_engine
from tests.conftest import run_cli
from tests.helpers import make_image

# --- official layouts (research: entries copied from cap.rc2.val.json / test1, cap.dress.*) ----


def cirr_entry(pairid: int, ref: str, caption: str, members: list[str], target: str | None) -> dict:
    """A CIRR caption row in the field order and shape of cap.rc2.{val,test1}.json."""
    row: dict[str, Any] = {"pairid": pairid, "reference": ref}
    if target is not None:
        row["target_hard"] = target
        row["target_soft"] = {target: 1.0}
    row["caption"] = caption
    row["img_set"] = {"id": pairid % 97, "members": members, "reference_rank": 2}
    if target is not None:
        row["img_set"]["target_rank"] = 3
    return row


def fiq_entry(candidate: str, captions: list[str], target: str | None) -> dict:
    """A FashionIQ caption row as in cap.{dress,shirt,toptee}.{val,test}.json."""
    row: dict[str, Any] = {"target": target} if target is not None else {}
    return {**row, "candidate": candidate, "captions": captions}


def write_json(path: Path, data: Any, indent: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent))
    return path


# --- pure metric functions ---------------------------------------------------------------------


def test_metrics_against_hand_computed() -> None:
    ranked = [False, True, False, False, False, True, False, False, False, False]
    assert recall_at(ranked, 1, 1) == 0.0 and recall_at(ranked, 5, 1) == 1.0
    assert recall_at(ranked, 5, 2) == 0.5 and recall_at(ranked, 10, 2) == 1.0
    assert mrr_at(ranked, 10) == 0.5 and mrr_at([False] * 10, 10) == 0.0
    # DCG = 1/log2(3) + 1/log2(7); IDCG = 1 + 1/log2(3)
    assert ndcg_at(ranked, 10, 2) == pytest.approx((0.63093 + 0.35621) / 1.63093, abs=1e-4)
    assert ndcg_at([True], 10, 1) == 1.0
    m = metrics_for([([True, False], 1), ([False, False, True], 1)])
    assert m["recall@1"] == 0.5 and m["recall@5"] == 1.0
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3) / 2)


def test_cirr_metrics_hand_computed() -> None:
    names = [f"n{i}" for i in range(60)]
    # query A: target at rank 1; members n3, n1, n7 (+ the target) -> subset [n0, n1, n3, n7]
    # query B: target at rank 7; members n9, n30 -> subset [n6, n9, n30]: target 1st
    # query C: target at rank 51 (beyond R@50); members n4, n5, n8 -> subset [n4, n5, n8, n50]
    a = subset_ranking(names, ["n3", "n1", "n7", "n0"])
    b = subset_ranking(names, ["n9", "n30", "n6"])
    c = subset_ranking(names, ["n4", "n5", "n8", "n50"])
    assert a == ["n0", "n1", "n3", "n7"] and b == ["n6", "n9", "n30"]
    m = cirr_metrics([(names, "n0", a), (names, "n6", b), (names, "n50", c)])
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@5"] == pytest.approx(1 / 3)
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["recall@50"] == pytest.approx(2 / 3)  # rank 51 is a miss
    assert m["recall_subset@1"] == pytest.approx(2 / 3)
    assert m["recall_subset@2"] == pytest.approx(2 / 3)
    assert m["recall_subset@3"] == pytest.approx(2 / 3)  # C's target is 4th of its subset
    assert m["recall_avg"] == pytest.approx((1 / 3 + 2 / 3) / 2)  # (R@5 + R_subset@1) / 2
    assert hit_at(names, "n9", 10) == 1.0 and hit_at(names, "n10", 10) == 0.0


def test_fashioniq_metrics_and_the_kept_reference() -> None:
    # The reference (candidate) "ref" is retrieved first; the target is 11th with it kept.
    kept = ["ref"] + [f"x{i}" for i in range(9)] + ["tgt"] + [f"y{i}" for i in range(45)]
    assert fiq_metrics([(kept, "tgt")]) == {"recall@10": 0.0, "recall@50": 1.0}
    # Removed (as CIRR does), the target would be 10th: the protocols differ on this query.
    removed = [n for n in kept if n != "ref"]
    assert fiq_metrics([(removed, "tgt")])["recall@10"] == 1.0
    dress = fiq_metrics([(kept, "tgt"), (kept, "x0")])  # R@10 = 1/2
    shirt = fiq_metrics([(kept, "y44")])  # rank 56: miss at 10 and 50
    assert dress == {"recall@10": 0.5, "recall@50": 1.0}
    assert shirt == {"recall@10": 0.0, "recall@50": 0.0}
    mean = fiq_mean({"dress": dress, "shirt": shirt})
    assert mean == {"recall@10": 0.25, "recall@50": 0.5, "recall_avg": 0.375}


# --- official file formats ---------------------------------------------------------------------


def test_official_formats_read(tmp_path: Path) -> None:
    members = ["dev-430-3-img0", "dev-63-0-img1", "dev-1028-1-img1", "dev-244-0-img0"]
    val = write_json(
        tmp_path / "cap.rc2.val.json",
        [cirr_entry(12060, "dev-244-0-img0", "show three bottles", members, "dev-1028-1-img1")],
    )
    qs = read_query_set(val)
    q = qs.queries[0]
    assert (qs.format, qs.has_ground_truth, qs.group, qs.split) == ("cirr", True, "rc2", "val")
    assert (q.qid, q.text, q.reference, q.relevant) == (
        "12060",
        "show three bottles",
        "dev-244-0-img0",
        {"dev-1028-1-img1"},
    )
    assert q.members == ("dev-430-3-img0", "dev-63-0-img1", "dev-1028-1-img1")  # minus reference
    # test1: no target_hard / target_soft / target_rank, and a caption of one space (pairid 27098)
    test1 = write_json(
        tmp_path / "cap.rc2.test1.json",
        [cirr_entry(27098, "test1-147-1-img1", " ", ["test1-147-1-img1", "test1-2-0-img0"], None)],
    )
    qs = read_query_set(test1)
    assert qs.format == "cirr" and not qs.has_ground_truth and qs.queries[0].relevant == set()
    fiq = write_json(
        tmp_path / "cap.dress.val.json",
        [fiq_entry("B005X4PL1G", ["is shiny and silver.", " fit and flare "], "B0084Y8XIU")],
        indent=4,
    )
    qs = read_query_set(fiq)
    q = qs.queries[0]
    assert (qs.format, qs.group, qs.split, q.reference) == (
        "fashioniq",
        "dress",
        "val",
        "B005X4PL1G",
    )
    assert q.text == "Is shiny and silver and fit and flare"  # CLIP4Cir's joining
    test = write_json(tmp_path / "cap.dress.test.json", [fiq_entry("B007E66YTO", ["", "x"], None)])
    qs = read_query_set(test)
    assert not qs.has_ground_truth and qs.queries[0].entry == fiq_entry(
        "B007E66YTO", ["", "x"], None
    )


def _without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


def _valid_cirr(i: int) -> dict:
    return cirr_entry(
        i, f"dev-{i}-0-img0", "a caption", [f"dev-{i}-0-img0", "dev-9-0-img1"], "dev-9-0-img1"
    )


@pytest.mark.parametrize(
    ("name", "rows", "message"),
    [
        ("cap.rc2.val.json", [_valid_cirr(1), {**_valid_cirr(2), "caption": None}],
         "row 2: field 'caption' must be a string"),
        ("cap.rc2.val.json", [_valid_cirr(1), _valid_cirr(2), _without(_valid_cirr(3), "caption")],
         "row 3: missing field 'caption'"),
        ("cap.rc2.val.json", [_valid_cirr(1), _without(_valid_cirr(2), "target_hard")],
         "row 2: missing field 'target_hard'"),
        ("cap.rc2.test1.json", [_valid_cirr(1), {**_valid_cirr(2), "img_set": {"id": 1}}],
         "row 2: missing field 'img_set.members'"),
        ("cap.rc2.test1.json", [_valid_cirr(1), {**_valid_cirr(2), "pairid": "2"}],
         "row 2: field 'pairid' must be an integer"),
        ("cap.dress.test.json", [fiq_entry("B1", ["a", "b"], None), {"captions": ["a"]}],
         "row 2: missing field 'candidate'"),
        ("cap.dress.val.json", [fiq_entry("B1", ["a", "b"], "B2"), fiq_entry("B3", ["a"], None)],
         "row 2: missing field 'target'"),
        ("cap.shirt.val.json", [fiq_entry("B1", ["a", 3], "B2")],
         "row 1: field 'captions' must be a list of strings"),
        ("cap.shirt.val.json", [fiq_entry("B1", ["a"], "B2"), "oops"],
         "row 2: expected an object, got str"),
        ("q.json", [{"x": 1}], "neither CIRR"),
    ],
)  # fmt: skip
def test_malformed_rows_are_one_line_errors(
    tmp_path: Path, name: str, rows: list, message: str
) -> None:
    path = write_json(tmp_path / name, rows)
    with pytest.raises(EvalInputError) as err:
        read_query_set(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_jsonl_reader_and_image_lookup(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    (imgs / "dev").mkdir(parents=True)
    make_image(1).save(imgs / "dev" / "dev-1-a.png")
    make_image(2).save(imgs / "B001.jpg")
    cirr = write_json(
        tmp_path / "cap.rc2.val.json", [cirr_entry(1, "dev-1-a", "red", [], "dev-2-b")]
    )
    q = read_queries(cirr, imgs)[0]
    assert (q.text, q.relevant, q.exclude) == ("red", {"dev-2-b"}, {"dev-1-a"})
    assert q.image.endswith("dev-1-a.png")
    with pytest.raises(EvalInputError, match="pass --images"):
        read_queries(cirr)
    ours = tmp_path / "q.jsonl"
    ours.write_text(
        '{"text": "red", "relevant": ["a"]}\n\n{"image": "imgs/B001.jpg", "relevant": ["b", 3]}\n'
    )
    qs = read_queries(ours)
    assert qs[0].image is None and qs[1].relevant == {"b", "3"} and Path(qs[1].image).is_file()
    for content, msg in (
        ('{"text": "x"}', "relevant"),
        ("{bad", "invalid JSON"),
        ("", "no queries"),
    ):
        ours.write_text(content)
        with pytest.raises(EvalInputError, match=msg):
            read_queries(ours)
    assert issubclass(EvalInputError, MMSearchError)


def test_protocol_choice_and_split_matching(tmp_path: Path) -> None:
    val = write_json(tmp_path / "cap.rc2.val.json", [_valid_cirr(1)])
    dress = write_json(tmp_path / "cap.dress.val.json", [fiq_entry("B1", ["a"], "B2")])
    shirt = write_json(tmp_path / "cap.shirt.val.json", [fiq_entry("B1", ["a"], "B2")])
    assert read_sets([val])[1].name == "cirr"
    assert read_sets([dress, shirt])[1].name == "fashioniq"
    assert read_sets([val], protocol="plain")[1].name == "plain"
    with pytest.raises(ConfigError, match="mix formats"):
        read_sets([val, dress])
    with pytest.raises(ConfigError, match="is a cirr file"):
        read_sets([val], protocol="fashioniq")
    test1 = write_json(tmp_path / "cap.rc2.test1.json", [cirr_entry(1, "r", "c", ["r"], None)])
    with pytest.raises(ConfigError, match="needs targets"):
        read_sets([test1], protocol="plain")
    sets = read_sets([dress, shirt])[0]
    sd, ss = tmp_path / "split.dress.val.json", tmp_path / "split.shirt.val.json"
    assert match_splits(sets, [ss, sd]) == [sd, ss]
    with pytest.raises(ConfigError, match=r"no --split-file for cap.shirt.val.json .*split.shirt"):
        match_splits(sets, [sd])
    with pytest.raises(ConfigError, match="matches no query file"):
        match_splits(sets, [sd, ss, tmp_path / "split.toptee.val.json"])
    assert parse_modes(["dense,hybrid", "dense"]) == ["dense", "hybrid"]
    assert parse_modes([]) == [None]
    with pytest.raises(ConfigError, match="--mode must be one of"):
        parse_modes(["sparse"])


def test_gallery_restriction_and_warnings(tmp_path: Path) -> None:
    rows = [
        {"id": f"r{i}", "item_key": f"/d/x{i}.png", "image_path": f"/d/x{i}.png"} for i in range(6)
    ]
    split = {"x0": "./dev/x0.png", "x1": "./dev/x1.png", "x9": "./dev/x9.png"}
    g = gallery_mod.build(
        rows, split=split, split_path=tmp_path / "split.rc2.val.json", wanted=set(), label="f"
    )
    assert g.ids_by_name == {"x0": ["r0"], "x1": ["r1"]}
    f = g.filters.filters[0]
    assert (f.key, f.operator.value, f.value) == ("id", "in", ["r0", "r1"])  # 2 in < 4 out
    assert g.summary["outside_split"] == 4 and g.summary["missing_from_collection"] == 1
    assert any(
        "4 of the collection's 6 images are not in split.rc2.val.json" in w for w in g.warnings
    )
    assert any("1 of the 3 images" in w and "x9" in w for w in g.warnings)
    big = {f"x{i}": None for i in range(5)}  # FashionIQ split: a list of ids
    g = gallery_mod.build(
        rows, split=big, split_path=tmp_path / "split.dress.val.json", wanted=set(), label="f"
    )
    f = g.filters.filters[0]
    assert (f.operator.value, f.value) == ("nin", ["r5"])  # the shorter list
    g = gallery_mod.build(rows, split=None, split_path=None, wanted=set(), label="f")
    assert g.filters is None and len(g.ids_by_name) == 6 and g.name({"id": "r3"}) == "x3"


# --- the runner's report, with a fake engine -------------------------------------------------


@dataclass
class _Result:
    names: list[str]
    status: str
    query: dict = field(default_factory=dict)

    @property
    def results(self) -> list[dict]:
        return [{"id": n, "image_path": f"/imgs/{n}.jpg"} for n in self.names]

    @property
    def rerank(self) -> dict:
        return {"status": self.status}

    @property
    def timings(self) -> dict:
        return {"embed_s": 0.001, "search_s": 0.002}


class FakeEngine:
    """Ranks a fixed list per search mode; its 'rerank' reverses the head it is given;
    'keyword' is unsupported, as on a collection without a text index."""

    def __init__(self, rankings: dict[str, list[str]]) -> None:
        self.rankings = rankings
        self.calls: list[tuple] = []

    def search(self, text=None, image=None, *, top_k=None, filters=None, rerank=None, mode=None):
        self.calls.append((mode, top_k, rerank))
        if mode == "keyword":
            raise ConfigError(
                "search mode 'keyword' needs a text index, and collection 'c' has none"
            )
        names = self.rankings[mode or "dense"][:top_k]
        if rerank:
            return _Result(names[::-1], "ok", {"mode": mode or "dense"})
        return _Result(names, "skipped", {"mode": mode or "dense"})


def _fiq_prepared(tmp_path: Path) -> Prepared:
    entries = [fiq_entry("ref", [""], "t1"), fiq_entry("ref", ["longer"], "t2")]
    path = write_json(tmp_path / "cap.dress.val.json", entries)
    sets, proto = read_sets([path])
    sets[0].queries[0].image = sets[0].queries[1].image = None  # text-only for the fake
    return Prepared(proto, sets, [gallery_mod.unlisted(path.name)] * 1)


def test_report_per_search_mode_and_stage(tmp_path: Path) -> None:
    fillers = [f"f{i}" for i in range(60)]
    # dense: t1 at rank 3, t2 at rank 12 -> R@10 = 1/2; the fake rerank reverses the top 10:
    # t1 moves to rank 8 (still a hit), t2 stays at 12: ranks below the head keep their order.
    dense = ["ref", "f0", "t1", *fillers[1:9], "t2", *fillers[9:]]
    # hybrid: t1 at rank 11 (ref kept at 1: a miss at 10), t2 at rank 2
    hybrid = ["ref", "t2", *fillers[1:9], "t1", *fillers[9:]]
    engine = FakeEngine({"dense": dense, "hybrid": hybrid})
    prep = _fiq_prepared(tmp_path)
    report = evaluate(
        engine, prep, stages=["retrieval", "rerank"], search_modes=["dense", "hybrid"]
    )
    assert report["protocol"] == "fashioniq" and report["search_modes"] == ["dense", "hybrid"]
    assert "retrieval" not in report and set(report["by_mode"]) == {"dense", "hybrid"}
    d, h = report["by_mode"]["dense"], report["by_mode"]["hybrid"]
    assert d["retrieval"]["recall@10"] == 0.5 and d["rerank"]["recall@10"] == 0.5
    assert d["rerank"]["recall@50"] == 1.0  # t2 (rank 12) comes from the retrieval below the head
    assert d["retrieval"]["categories"] == {
        "dress": {"queries": 2, "recall@10": 0.5, "recall@50": 1.0}
    }
    assert h["retrieval"]["recall@10"] == 0.5 and h["retrieval"]["recall@50"] == 1.0
    assert d["rerank"]["rerank_status"] == {"ok": 2} and d["retrieval"]["rerank_status"] == {
        "skipped": 2
    }
    assert d["retrieval"]["recall_avg"] == 0.75
    # retrieval asks for 50 ranks (reference kept: no +1); the rerank for its head of 10
    assert ("dense", 50, False) in engine.calls and ("dense", 10, True) in engine.calls
    header, rows = table(report)
    assert header == ["metric (%)", "dense retrieval", "dense rerank", "hybrid retrieval",
                      "hybrid rerank"]  # fmt: skip
    assert rows[0] == ["recall@10", "50.00", "50.00", "50.00", "50.00"]
    assert [r[0] for r in rows] == ["recall@10", "recall@50", "recall_avg"]  # one category
    assert "hybrid rerank: rerank status {'ok': 2}" in "\n".join(summary(report))
    # one search mode: the stages are top-level keys, as before
    single = evaluate(FakeEngine({"dense": dense}), prep, stages=["rerank"])
    assert single["search_modes"] == ["dense"] and "by_mode" not in single
    assert single["rerank"]["recall@10"] == 0.5


def test_an_unsupported_search_mode_is_one_line(tmp_path: Path) -> None:
    engine = FakeEngine({"dense": ["ref", "t1", "t2"]})
    with pytest.raises(ConfigError) as err:
        evaluate(
            engine, _fiq_prepared(tmp_path), stages=["retrieval"], search_modes=["dense", "keyword"]
        )
    assert str(err.value).startswith(
        "eval --mode keyword: cap.dress.val.json row 1: search mode 'keyword' needs a text index"
    )
    assert all(mode != "dense" or k == 1 for mode, k, _ in engine.calls)  # failed before any run


# --- end to end: the real engine (tiny model, Milvus Lite) ------------------------------------

CIRR_DEV = [f"dev-{200 + i}-{i % 4}-img{i % 2}" for i in range(10)]
CIRR_TEST = [f"test1-{300 + i}-{i % 4}-img{i % 2}" for i in range(8)]
DRESS = [f"B00DRS{i:04d}" for i in range(12)]
SHIRT = [f"B00SHT{i:04d}" for i in range(6)]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, tiny_embedding) -> dict[str, Any]:
    """One collection holding a CIRR-like (img_raw/dev, img_raw/test1) and a FashionIQ-like
    (images/<id>.jpg) data set, laid out as they ship, with their official split files."""
    from ingestion.pipeline import Ingestor
    from ingestion.sources import folder_items
    from rag.store.milvus import CatalogStore

    root = tmp_path_factory.mktemp("bench")
    seed = 0
    for folder, names, ext in (
        (root / "cirr/img_raw/dev", CIRR_DEV, "png"),
        (root / "cirr/img_raw/test1", CIRR_TEST, "png"),
        (root / "fashion-iq/images", DRESS + SHIRT, "jpg"),
    ):
        folder.mkdir(parents=True)
        for name in names:
            make_image(seed).save(folder / f"{name}.{ext}")
            seed += 1
    splits = root / "splits"
    write_json(splits / "split.rc2.val.json", {n: f"./dev/{n}.png" for n in CIRR_DEV})
    write_json(splits / "split.rc2.test1.json", {n: f"./test1/{n}.png" for n in CIRR_TEST})
    write_json(splits / "split.dress.val.json", DRESS, indent=4)
    write_json(splits / "split.shirt.val.json", SHIRT, indent=4)
    write_json(splits / "split.dress.test.json", DRESS, indent=4)
    uri = str(root / "milvus" / "bench.db")
    store = CatalogStore(uri=uri, collection="mmsearch_images", dim=tiny_embedding.dim,
                         model_id=tiny_embedding.model_name)  # fmt: skip
    Ingestor(embedding=tiny_embedding, store=store, batch_size=16).run(list(folder_items(root)))
    store.close()
    return {"root": root, "uri": uri, "splits": splits}


def _engine(bench: dict, tiny_embedding):
    from rag.store.milvus import CatalogStore

    store = CatalogStore(uri=bench["uri"], collection="mmsearch_images", create=False)
    return build_query_engine(Settings(rerank=False), embedding=tiny_embedding, store=store)


def _full_ranking(engine, image: Path, text: str, gallery: list[str]) -> list[str]:
    """The whole collection ranked without any filter, then cut to ``gallery`` by hand: an
    independent path to the ranking the evaluation must score."""
    res = engine.search(text=text, image=image, top_k=100, rerank=False)
    return [
        Path(r["image_path"]).stem for r in res.results if Path(r["image_path"]).stem in gallery
    ]


def test_cirr_end_to_end_against_hand_built_targets(bench, tiny_embedding, tmp_path: Path) -> None:
    dev = bench["root"] / "cirr/img_raw/dev"
    engine = _engine(bench, tiny_embedding)
    try:
        rows = []
        for pairid, (ref, caption, t_pos, others) in enumerate(
            [(CIRR_DEV[0], "add a red hat", 0, [1, 2, 3]),  # target 1st; subset 1st
             (CIRR_DEV[1], "make it darker", 5, [6, 7, 8])],  # target 6th; subset 1st
            start=100,
        ):  # fmt: skip
            ranking = _full_ranking(engine, dev / f"{ref}.png", caption, CIRR_DEV)
            ranking = [n for n in ranking if n != ref]  # the protocol removes the reference
            members = [ranking[t_pos], *(ranking[i] for i in others), ref]
            rows.append(cirr_entry(pairid, ref, caption, members, ranking[t_pos]))
        cap = write_json(tmp_path / "cap.rc2.val.json", rows)
        sets, proto = read_sets([cap], bench["root"] / "cirr/img_raw")
        prep = prepare(engine, sets, proto, split_files=[bench["splits"] / "split.rc2.val.json"])
        report = evaluate(engine, prep, stages=["retrieval"])
    finally:
        engine.close()
    r = report["retrieval"]
    assert report["protocol"] == "cirr" and report["depth"] == 50
    assert (r["recall@1"], r["recall@5"], r["recall@10"], r["recall@50"]) == (0.5, 0.5, 1.0, 1.0)
    assert (r["recall_subset@1"], r["recall_subset@2"], r["recall_subset@3"]) == (1.0, 1.0, 1.0)
    assert r["recall_avg"] == 0.75  # (R@5 + R_subset@1) / 2
    g = report["gallery"]["cap.rc2.val.json"]
    assert g["images"] == 10 and g["outside_split"] == 26 and g["restricted_by"].startswith("id in")
    assert any(
        "26 of the collection's 36 images are not in split.rc2.val.json" in w
        for w in report["warnings"]
    )


def test_cirr_subset_members_below_the_depth(bench, tiny_embedding, tmp_path: Path) -> None:
    """Members ranked below the scored depth are placed by one search limited to them."""
    from rag.evaluation.protocols import Protocol
    from rag.evaluation.runner import rank_query

    dev = bench["root"] / "cirr/img_raw/dev"
    engine = _engine(bench, tiny_embedding)
    try:
        ref = CIRR_DEV[2]
        ranking = [n for n in _full_ranking(engine, dev / f"{ref}.png", "x", CIRR_DEV) if n != ref]
        members = [ranking[8], ranking[4], ranking[6], ref]  # all below a depth of 3
        cap = write_json(
            tmp_path / "cap.rc2.val.json", [cirr_entry(1, ref, "x", members, ranking[6])]
        )
        sets, _ = read_sets([cap])
        prep = prepare(
            engine, sets, PROTOCOLS["cirr"], split_files=[bench["splits"] / "split.rc2.val.json"]
        )
        shallow = Protocol("cirr", True, 3)
        out = rank_query(engine, sets[0].queries[0], prep.galleries[0], shallow, mode=None,
                         stages=["retrieval"], top_k=10)  # fmt: skip
    finally:
        engine.close()
    ranked, _ = out["retrieval"]
    assert ranked.names == ranking[:3]
    assert ranked.subset == [ranking[4], ranking[6], ranking[8]]


def test_fashioniq_end_to_end_keeps_the_reference(bench, tiny_embedding, tmp_path: Path) -> None:
    images = bench["root"] / "fashion-iq/images"
    engine = _engine(bench, tiny_embedding)
    try:
        # dress q1: empty captions (they occur in the real files) -> an image query: the
        # candidate itself ranks 1st; the target is picked 11th, so R@10 = 0 with the reference
        # kept and 1 without it. q2: target = best non-candidate -> a hit. shirt: target 3rd.
        kept = _full_ranking(engine, images / f"{DRESS[0]}.jpg", "", DRESS)
        assert kept[0] == DRESS[0]
        text2 = "Is longer and has sleeves"
        kept2 = _full_ranking(engine, images / f"{DRESS[1]}.jpg", text2, DRESS)
        shirt = _full_ranking(engine, images / f"{SHIRT[0]}.jpg", "Is blue", SHIRT)
        dress_rows = [
            fiq_entry(DRESS[0], ["", ""], kept[10]),
            fiq_entry(
                DRESS[1], ["is longer.", "has sleeves"], next(n for n in kept2 if n != DRESS[1])
            ),
        ]
        dress_cap = write_json(tmp_path / "cap.dress.val.json", dress_rows, indent=4)
        shirt_cap = write_json(
            tmp_path / "cap.shirt.val.json", [fiq_entry(SHIRT[0], ["is blue", ""], shirt[2])]
        )
        splits = [
            bench["splits"] / "split.dress.val.json",
            bench["splits"] / "split.shirt.val.json",
        ]
        sets, proto = read_sets([dress_cap, shirt_cap])  # images found through the collection
        report = evaluate(
            engine, prepare(engine, sets, proto, split_files=splits), stages=["retrieval"]
        )
        sets, proto = read_sets([dress_cap], protocol="plain")
        plain = evaluate(
            engine, prepare(engine, sets, proto, split_files=splits[:1]), stages=["retrieval"]
        )
    finally:
        engine.close()
    r = report["retrieval"]
    assert r["categories"]["dress"] == {"queries": 2, "recall@10": 0.5, "recall@50": 1.0}
    assert r["categories"]["shirt"] == {"queries": 1, "recall@10": 1.0, "recall@50": 1.0}
    assert (r["recall@10"], r["recall@50"], r["recall_avg"]) == (0.75, 1.0, 0.875)
    assert report["gallery"]["cap.shirt.val.json"]["images"] == 6
    assert (
        plain["protocol"] == "plain" and plain["retrieval"]["recall@10"] == 1.0
    )  # reference excluded


def test_cli_cirr_val_and_test1_in_one_run(bench, tiny_embed_dir: Path, tmp_path: Path) -> None:
    root, splits = bench["root"], bench["splits"]
    members = [CIRR_TEST[0], CIRR_TEST[1], CIRR_TEST[2], CIRR_TEST[3], CIRR_TEST[4], CIRR_TEST[5]]
    test1 = write_json(tmp_path / "cap.rc2.test1.json", [
        cirr_entry(12063, CIRR_TEST[0], "remove all but one dog", members, None),
        cirr_entry(27098, CIRR_TEST[3], " ", members, None),
    ])  # fmt: skip
    val = write_json(tmp_path / "cap.rc2.val.json", [
        cirr_entry(12060, CIRR_DEV[0], "show three bottles", CIRR_DEV[:6], CIRR_DEV[4]),
    ])  # fmt: skip
    env = {"MMSEARCH_MILVUS_URI": bench["uri"], "MMSEARCH_EMBED_MODEL": str(tiny_embed_dir)}
    out = tmp_path / "sub"
    res = run_cli(
        "eval", str(val), str(test1), "--split-file", str(splits / "split.rc2.test1.json"),
        "--split-file", str(splits / "split.rc2.val.json"), "--images", str(root / "cirr/img_raw"),
        "--no-rerank", "--mode", "dense", "--json", "--submission-dir", str(out), env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    r = report["retrieval"]
    assert report["protocol"] == "cirr" and report["search_modes"] == ["dense"]
    assert set(r) >= {"recall@1", "recall@50", "recall_subset@3", "recall_avg"}
    assert r["recall@50"] == 1.0  # a 10-image gallery: every target is in the top 50
    assert sorted(Path(p).name for p in r["submission"]) == [
        "test1_pred_ranks_recall.json", "test1_pred_ranks_recall_subset.json"]  # fmt: skip
    recall = json.loads((out / "dense-retrieval" / "test1_pred_ranks_recall.json").read_text())
    subset = json.loads(
        (out / "dense-retrieval" / "test1_pred_ranks_recall_subset.json").read_text()
    )
    assert list(recall)[:2] == ["version", "metric"] and recall["metric"] == "recall"
    assert (subset["version"], subset["metric"]) == ("rc2", "recall_subset")
    assert set(recall) == {"version", "metric", "12063", "27098"}
    for pairid, ref in (("12063", CIRR_TEST[0]), ("27098", CIRR_TEST[3])):
        assert len(recall[pairid]) == 7 and ref not in recall[pairid]  # test1 gallery minus ref
        assert set(recall[pairid]) <= set(CIRR_TEST)  # the split's images only
        assert len(subset[pairid]) == 3 and set(subset[pairid]) <= set(members) - {ref}
        assert subset[pairid] == [n for n in recall[pairid] if n in members][:3]


def test_fashioniq_test_split_writes_the_kit_shape(bench, tiny_embedding, tmp_path: Path) -> None:
    rows = [fiq_entry(DRESS[2], [" yello and more flowing", "short and black"], None),
            fiq_entry(DRESS[3], ["Is red", ""], None)]  # fmt: skip
    cap = write_json(tmp_path / "cap.dress.test.json", rows, indent=4)
    engine = _engine(bench, tiny_embedding)
    try:
        sets, proto = read_sets([cap], bench["root"] / "fashion-iq/images")
        prep = prepare(engine, sets, proto, split_files=[bench["splits"] / "split.dress.test.json"])
        report = evaluate(engine, prep, stages=["rerank"], submission_dir=tmp_path / "out")
    finally:
        engine.close()
    assert "recall@10" not in report["rerank"]  # no targets, no metrics
    path = tmp_path / "out" / "dense-rerank" / "dress.predict.json"
    assert report["rerank"]["submission"] == [str(path)]
    pred = json.loads(path.read_text())
    assert [{k: v for k, v in p.items() if k != "ranking"} for p in pred] == rows
    for p in pred:
        assert len(p["ranking"]) == 12 and set(p["ranking"]) == set(DRESS)  # reference kept


def test_search_modes_side_by_side_on_the_real_engine(catalog, tiny_embedding, tmp_path) -> None:
    """dense / keyword / hybrid through the real engine (BM25 on the catalog titles): the
    keyword mode finds a product by its exact title; an image-only row stops keyword at once."""
    store, folder, _ = catalog
    engine = build_query_engine(Settings(rerank=False), embedding=tiny_embedding, store=store)
    path = tmp_path / "q.jsonl"
    rows = [{"text": f"Product {i}", "relevant": [f"sku-{i}"]} for i in (3, 7, 11)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    sets, proto = read_sets([path])
    prep = prepare(engine, sets, proto)
    modes = parse_modes(["dense,keyword", "hybrid"])
    report = evaluate(engine, prep, stages=["retrieval"], search_modes=modes)
    assert report["search_modes"] == ["dense", "keyword", "hybrid"]
    by = report["by_mode"]
    assert by["keyword"]["retrieval"]["recall@1"] == 1.0
    assert by["keyword"]["retrieval"]["mrr@10"] == 1.0
    assert all(set(by[m]["retrieval"]) >= {"recall@1", "ndcg@10", "latency_ms"} for m in by)
    default = evaluate(engine, prep, stages=["retrieval"])
    assert default["search_modes"] == ["hybrid"]  # text-only queries default to hybrid
    image_row = {"image": str(folder / "img_001.png"), "relevant": ["x"]}
    path.write_text(path.read_text() + "\n" + json.dumps(image_row))
    sets, proto = read_sets([path])
    with pytest.raises(ConfigError, match=r"eval --mode keyword: q.jsonl row 4: .*query text"):
        evaluate(
            engine, prepare(engine, sets, proto), stages=["retrieval"], search_modes=["keyword"]
        )


def test_cli_eval_jsonl(catalog, tiny_embed_dir, milvus_uri, tmp_path: Path) -> None:
    store, folder, _ = catalog
    store.close()
    path = tmp_path / "queries.jsonl"
    rows = [
        {"image": str(folder / f"img_{i:03d}.png"), "relevant": [f"img_{i:03d}.png"]}
        for i in range(4)
    ]
    rows.append(
        {
            "text": "a phone case with this",
            "image": str(folder / "img_005.png"),
            "relevant": ["sku-5"],
        }
    )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    env = {"MMSEARCH_MILVUS_URI": milvus_uri, "MMSEARCH_EMBED_MODEL": str(tiny_embed_dir)}
    plot = tmp_path / "plot.png"
    res = run_cli("eval", str(path), "--both", "--json", "--plot", str(plot), env=env)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["protocol"] == "plain" and data["retrieval"]["recall@1"] >= 0.8
    assert set(data["retrieval"]) >= {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"}
    assert "embed_s" in data["retrieval"]["latency_ms"]
    # the default VLM is not opted in: the rerank stage reports that it was skipped
    assert data["rerank"]["rerank_status"] == {"skipped": 5}
    assert plot.is_file() and plot.stat().st_size > 1000
    bad = run_cli("eval", str(tmp_path / "missing.jsonl"), env=env)
    assert bad.returncode == 1 and "cannot read" in bad.stderr
    broken = write_json(tmp_path / "cap.rc2.val.json", [_valid_cirr(1), {"pairid": 2}])
    bad = run_cli("eval", str(broken), env=env)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == f"error: {broken}: row 2: missing field 'reference'"
