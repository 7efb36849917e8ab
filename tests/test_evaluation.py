import json
from pathlib import Path

import pytest

from rag.core.settings import Settings
from rag.errors import EvalInputError, MMSearchError
from rag.evaluation.metrics import metrics_for, mrr_at, ndcg_at, recall_at
from rag.evaluation.queries import read_queries
from rag.evaluation.runner import evaluate
from rag.factory import build_query_engine
from tests.conftest import run_cli
from tests.helpers import make_image


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


def test_readers(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    (imgs / "dev").mkdir(parents=True)
    for name in ("dev-1-a", "dev-2-b"):
        make_image(1).save(imgs / "dev" / f"{name}.png")
    make_image(2).save(imgs / "B001.jpg")
    cirr = tmp_path / "cap.rc2.val.json"
    cirr.write_text(
        json.dumps(
            [
                {
                    "pairid": 1,
                    "reference": "dev-1-a",
                    "target_hard": "dev-2-b",
                    "caption": "make it red",
                    "img_set": {"members": []},
                }
            ]
        )
    )
    q = read_queries(cirr, imgs)[0]
    assert (q.text, q.relevant, q.exclude) == ("make it red", {"dev-2-b"}, {"dev-1-a"})
    assert q.image.endswith("dev-1-a.png")
    fiq = tmp_path / "cap.dress.val.json"
    fiq.write_text(
        json.dumps(
            [{"target": "B002", "candidate": "B001", "captions": ["is longer", " has sleeves "]}]
        )
    )
    q = read_queries(fiq, imgs)[0]
    assert q.text == "is longer and has sleeves" and q.relevant == {"B002"}
    ours = tmp_path / "q.jsonl"
    ours.write_text(
        '{"text": "red", "relevant": ["a"]}\n\n{"image": "imgs/B001.jpg", "relevant": ["b", 3]}\n'
    )
    qs = read_queries(ours)
    assert qs[0].image is None and qs[1].relevant == {"b", "3"} and Path(qs[1].image).is_file()
    for content, msg in (
        ('{"text": "x"}', "relevant"),
        ("{bad", "invalid JSON"),
        ('[{"x": 1}]', "neither CIRR nor FashionIQ"),
    ):
        ours.write_text(content)
        with pytest.raises(EvalInputError, match=msg):
            read_queries(ours)
    with pytest.raises(EvalInputError, match="pass --images"):
        read_queries(cirr)
    assert issubclass(EvalInputError, MMSearchError)


def _queries(tmp_path: Path, folder: Path) -> Path:
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
    return path


def test_evaluate_end_to_end(catalog, tiny_embedding, tmp_path: Path) -> None:
    store, folder, _ = catalog
    engine = build_query_engine(Settings(rerank=False), embedding=tiny_embedding, store=store)
    report = evaluate(engine, read_queries(_queries(tmp_path, folder)), modes=["retrieval"])
    r = report["retrieval"]
    assert r["recall@1"] >= 0.8  # an indexed image finds itself first
    assert set(r) >= {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"}
    assert r["rerank_status"] == {"skipped": 5} and "embed_s" in r["latency_ms"]


def test_cli_eval(catalog, tiny_embed_dir, milvus_uri, tmp_path: Path) -> None:
    store, folder, _ = catalog
    store.close()
    env = {"MMSEARCH_MILVUS_URI": milvus_uri, "MMSEARCH_EMBED_MODEL": str(tiny_embed_dir)}
    plot = tmp_path / "plot.png"
    res = run_cli(
        "eval", str(_queries(tmp_path, folder)), "--both", "--json", "--plot", str(plot), env=env
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["retrieval"]["recall@1"] >= 0.8
    # the default VLM is not opted in: the rerank mode reports that it was skipped
    assert data["rerank"]["rerank_status"] == {"skipped": 5}
    assert plot.is_file() and plot.stat().st_size > 1000
    bad = run_cli("eval", str(tmp_path / "missing.jsonl"), env=env)
    assert bad.returncode == 1 and "cannot read" in bad.stderr
