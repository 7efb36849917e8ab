import json
import shlex
from pathlib import Path

from rag.embedding.multimodal import VisualizedBGEEmbedding
from tests.conftest import run_cli


def test_models_pull_offline_is_one_line(tmp_path: Path) -> None:
    res = run_cli(
        "models", "pull", "base", "--dir", str(tmp_path / "m"), env={"HF_HUB_OFFLINE": "1"}
    )
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot download the base model" in lines[0]
    assert "mmsearch models import base" in lines[0]
    assert not (tmp_path / "m").exists()  # nothing half-written


def test_models_import_then_load(tiny_embed_dir: Path, tmp_path: Path) -> None:
    ckpt = next(tiny_embed_dir.glob("*.pth"))
    spec = json.loads((tiny_embed_dir / "mmsearch_model.json").read_text())
    dest = tmp_path / "imported"
    res = run_cli(
        "models",
        "import",
        "base",
        "--checkpoint",
        str(ckpt),
        "--text-model",
        str(tiny_embed_dir / spec["text_model_dir"]),
        "--dir",
        str(dest),
    )
    assert res.returncode == 0, res.stderr
    assert (dest / "Visualized_base_en_v1.5.pth").is_file()
    # The tiny checkpoint is not the base architecture: the strict loader says so.
    from rag.errors import ModelLoadError

    try:
        VisualizedBGEEmbedding.from_local(dest)
    except ModelLoadError as e:
        assert "does not fit this model" in str(e) or "incomplete" in str(e)
    else:
        raise AssertionError("a tiny checkpoint loaded as the base variant")


def test_unknown_variant_and_data_set() -> None:
    res = run_cli("models", "pull", "huge")
    assert res.returncode == 1 and "unknown variant 'huge'" in res.stderr
    res = run_cli("data", "pull", "imagenet")
    assert res.returncode == 1 and "unknown data set" in res.stderr


def test_demo_offline_one_line(tmp_path: Path) -> None:
    res = run_cli("demo", env={"MMSEARCH_DATA_DIR": str(tmp_path / "d")}, cwd=tmp_path)
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1
    assert "cannot download the demo data set" in res.stderr and "--synthetic" in res.stderr


def test_demo_synthetic_runs_offline(tmp_path: Path) -> None:
    env = {"MMSEARCH_DATA_DIR": str(tmp_path / "d"), "MMSEARCH_RERANK": "false"}
    res = run_cli("demo", "--synthetic", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    table = res.stdout.split("\n1 ", 1)[1]
    first = table.split("\n2 ", 1)[0].replace("\n", "").replace(" ", "")
    assert "product_007" in first  # the mirrored query image finds its original first
    assert (tmp_path / "d" / "demo-results.png").is_file()
    again = run_cli("demo", "--synthetic", env=env, cwd=tmp_path)
    assert again.returncode == 0 and "added 0, unchanged 36" in again.stderr
    # The demo ends with the exact command that searches its index; run it as printed.
    line = again.stdout.split("search this index again with:\n", 1)[1].strip()
    words = shlex.split(line)
    printed_env = dict(w.split("=", 1) for w in words if w.startswith("MMSEARCH_"))
    args = [w for w in words if not w.startswith("MMSEARCH_")]
    assert args[:2] == ["mmsearch", "search"]
    res = run_cli(*args[1:], "--json", env={**env, **printed_env}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    top = json.loads(res.stdout)["results"][0]
    assert top["image_path"].endswith("product_007.png")
