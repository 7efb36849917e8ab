import subprocess
import sys

from rag.store.milvus import CatalogStore
from tests.conftest import REPO, run_cli


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from rag.app.cli import app; "
        "heavy = [m for m in ('torch', 'transformers', 'llama_index.core', 'pymilvus', 'timm') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "[]"
    res = run_cli("--help")
    assert res.returncode == 0 and "stats" in res.stdout


def test_stats_empty_and_populated(milvus_uri: str) -> None:
    env = {"MMSEARCH_MILVUS_URI": milvus_uri, "MMSEARCH_COLLECTION": "imgs"}
    res = run_cli("stats", "--json", env=env)
    assert res.returncode == 0, res.stderr
    import json

    data = json.loads(res.stdout)
    assert data["rows"] == 0 and data["exists"] is False

    store = CatalogStore(uri=milvus_uri, collection="imgs", dim=4, model_id="tiny-m")
    from llama_index.core.schema import ImageNode

    store.vector_store.add([ImageNode(id_="a", embedding=[1, 0, 0, 0], metadata={"item_key": "a"})])
    store.close()
    data = json.loads(run_cli("stats", "--json", env=env).stdout)
    assert {k: data[k] for k in ("rows", "dim", "model", "collection")} == {
        "rows": 1,
        "dim": 4,
        "model": "tiny-m",
        "collection": "imgs",
    }
    text = run_cli("stats", env=env)
    assert text.returncode == 0 and "tiny-m" in text.stdout


def test_stats_errors_are_one_line(tmp_path) -> None:
    res = run_cli("stats", env={"MMSEARCH_MILVUS_URI": "http://127.0.0.1:1"})
    assert res.returncode == 1
    assert res.stderr.startswith("error: cannot connect to Milvus")
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    res = run_cli("stats", env={"MMSEARCH_TOP_K": "zero"})
    assert res.returncode == 1 and "MMSEARCH_TOP_K" in res.stderr
