"""dtype per machine (forced, auto with the CPU's bf16 capability stubbed both ways, CUDA, MPS),
bf16 vs fp32 fidelity, the uint8 -> on-device preprocessing, batch defaults, the GPU benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rag.core import device as dev
from rag.errors import ConfigError
from tests.conftest import REPO
from tests.helpers import make_image

CPU = torch.device("cpu")


@pytest.fixture
def no_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    """The micro-benchmark must not run: calling it fails the test."""

    def boom(*_: object, **__: object) -> float:
        raise AssertionError("the bf16 micro-benchmark ran")

    monkeypatch.setattr(dev, "measure_bf16_speedup", boom)


@pytest.fixture
def cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "mmsearch" / "cpu-bf16.json"


# -- resolution --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
def test_forced_dtype_wins_on_any_cpu(name: str, no_benchmark: None) -> None:
    for flags in (set(), {"amx_bf16", "avx512_bf16"}):
        choice = dev.choose_dtype(name, CPU, flags=flags)
        assert choice.dtype == getattr(torch, name) and choice.name == name
        assert "forced" in choice.reason


def test_unknown_dtype_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="float64"):
        dev.choose_dtype("float64", CPU)


def test_auto_cpu_with_amx_is_bf16_without_measuring(no_benchmark: None) -> None:
    choice = dev.choose_dtype("auto", CPU, flags={"avx2", "avx512_bf16", "amx_bf16", "amx_tile"})
    assert choice.dtype == torch.bfloat16 and "amx_bf16" in choice.reason


def test_auto_cpu_without_bf16_is_fp32_without_measuring(no_benchmark: None) -> None:
    choice = dev.choose_dtype("auto", CPU, flags={"avx2", "fma", "avx512f"})
    assert choice.dtype == torch.float32 and "emulated" in choice.reason


@pytest.mark.parametrize(("speedup", "expected"), [(2.4, torch.bfloat16), (0.8, torch.float32)])
def test_auto_cpu_partial_bf16_decided_by_cached_micro_benchmark(
    monkeypatch: pytest.MonkeyPatch, cache_home: Path, speedup: float, expected: torch.dtype
) -> None:
    calls = []

    def fake(*_: object, **__: object) -> float:
        calls.append(1)
        return speedup

    monkeypatch.setattr(dev, "measure_bf16_speedup", fake)
    first = dev.choose_dtype("auto", CPU, flags={"avx512_bf16"})
    assert first.dtype == expected and "micro-benchmark" in first.reason
    assert json.loads(cache_home.read_text())["speedup"] == speedup
    again = dev.choose_dtype("auto", CPU, flags={"avx512_bf16"})
    assert again.dtype == expected and "cached" in again.reason
    assert len(calls) == 1  # measured once per machine
    dev.choose_dtype("auto", CPU, flags={"avx512_bf16", "amx_int8"})  # another machine key
    assert len(calls) == 2


def test_real_micro_benchmark_returns_a_ratio() -> None:
    assert 0.05 < dev.measure_bf16_speedup(repeats=2) < 50


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_cuda(monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: torch.dtype) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert dev.choose_dtype("auto", torch.device("cuda")).dtype == expected


def test_auto_mps_is_fp16() -> None:
    assert dev.choose_dtype("auto", torch.device("mps")).dtype == torch.float16


def test_cpu_flags_read_from_proc() -> None:
    if not Path("/proc/cpuinfo").exists():
        pytest.skip("no /proc/cpuinfo on this system")
    assert dev.cpu_flags()  # x86 'flags' or Arm 'Features'


def test_stats_says_dtype_and_why(milvus_uri: str) -> None:
    from tests.conftest import run_cli

    env = {"MMSEARCH_MILVUS_URI": milvus_uri, "MMSEARCH_DTYPE": "bfloat16"}
    data = json.loads(run_cli("stats", "--json", env=env).stdout)
    assert (data["device"], data["dtype"]) == ("cpu", "bfloat16")
    assert data["dtype_reason"] == "forced by MMSEARCH_DTYPE"


def test_loaded_embedding_reports_dtype_and_reason(tiny_embed_dir: Path) -> None:
    from rag.embedding.multimodal import VisualizedBGEEmbedding

    emb = VisualizedBGEEmbedding.from_local(tiny_embed_dir, device="cpu", dtype="bfloat16")
    assert emb.dtype == "bfloat16" and emb.dtype_reason == "forced by MMSEARCH_DTYPE"
    assert next(emb.model.parameters()).dtype == torch.bfloat16
    assert emb.embed_batch_size == 16  # the CPU default


def test_batch_size_defaults() -> None:
    from rag.embedding.multimodal import default_batch_size

    assert default_batch_size("cuda") == 64 and default_batch_size("cpu") == 16


# -- preprocessing -------------------------------------------------------------------------
def test_uint8_then_normalise_equals_the_reference_transform() -> None:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    from rag.embedding.preprocess import CLIP_MEAN, CLIP_STD, normalize, preprocess_uint8

    img = make_image(3, (400, 300))
    small = F.center_crop(F.resize(img, 224, interpolation=InterpolationMode.BICUBIC), [224, 224])
    reference = F.normalize(F.to_tensor(small), CLIP_MEAN, CLIP_STD)
    pixels = preprocess_uint8(img, 224)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 224, 224)
    assert torch.equal(normalize(pixels.unsqueeze(0), torch.float32)[0], reference)
    bf16 = normalize(pixels.unsqueeze(0), torch.bfloat16)[0]
    assert bf16.dtype == torch.bfloat16
    assert torch.allclose(bf16.float(), reference, atol=0.02)


# -- fidelity -------------------------------------------------------------------------------
def _cos(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def _fidelity(model_dir: Path, n: int) -> dict[str, float]:
    """Min cosine bf16 vs fp32 per kind of input."""
    from rag.embedding.multimodal import VisualizedBGEEmbedding

    emb = {
        dt: VisualizedBGEEmbedding.from_local(model_dir, device="cpu", dtype=dt)
        for dt in ("float32", "bfloat16")
    }
    images = [make_image(i, (320, 240)) for i in range(n)]
    texts = [f"red leather phone case number {i}" for i in range(n)]

    def kinds(e: VisualizedBGEEmbedding) -> dict[str, list[list[float]]]:
        return {
            "image": e.get_image_embedding_batch(images),
            "text": e.get_text_embedding_batch(texts),
            "composed": e.get_composed_embedding_batch(images, texts),
        }

    fp32, bf16 = kinds(emb["float32"]), kinds(emb["bfloat16"])
    return {k: min(_cos(a, b) for a, b in zip(fp32[k], bf16[k], strict=True)) for k in fp32}


def test_bf16_agrees_with_fp32_tiny(tiny_embed_dir: Path) -> None:
    worst = _fidelity(tiny_embed_dir, 6)
    assert all(c > 0.999 for c in worst.values()), worst


@pytest.mark.slow
def test_bf16_agrees_with_fp32_full_size(tmp_path: Path) -> None:
    from rag.embedding.tiny import make_embed_dir

    worst = _fidelity(make_embed_dir(tmp_path / "full", full_size=True), 4)
    assert all(c > 0.999 for c in worst.values()), worst


def test_same_top1_in_both_dtypes(tmp_path: Path, tiny_embed_dir: Path) -> None:
    """A catalog ingested and searched in fp32, and again in bf16: every query (a re-encoded,
    cropped copy of a catalog image, with and without an instruction) finds the same item."""
    from ingestion.pipeline import Ingestor
    from ingestion.service import list_items
    from rag.embedding.multimodal import VisualizedBGEEmbedding
    from rag.store.milvus import CatalogStore

    folder = tmp_path / "catalog"
    folder.mkdir()
    for i in range(12):
        make_image(i, (320, 240)).save(folder / f"p{i:02d}.png")
    queries = [make_image(i, (320, 240)).crop((8, 6, 312, 234)) for i in range(0, 12, 2)]
    top1: dict[str, list[str]] = {}
    for dt in ("float32", "bfloat16"):
        emb = VisualizedBGEEmbedding.from_local(tiny_embed_dir, device="cpu", dtype=dt)
        store = CatalogStore(
            uri=str(tmp_path / f"{dt}.db"), collection="c", dim=emb.dim, model_id=emb.model_name
        )
        try:
            Ingestor(embedding=emb, store=store).run(list_items([str(folder)]))
            vecs = emb.get_image_embedding_batch(queries)
            vecs += emb.get_composed_embedding_batch(queries, ["a product like this"] * 6)
            hits = store.client.search(store.collection, data=vecs, limit=1)
            top1[dt] = [h[0]["id"] for h in hits]
        finally:
            store.close()
    assert top1["float32"] == top1["bfloat16"]


@pytest.mark.slow
def test_compile_matches_eager(tiny_embed_dir: Path) -> None:
    from rag.embedding.multimodal import VisualizedBGEEmbedding

    img = make_image(1, (320, 240))
    eager = VisualizedBGEEmbedding.from_local(tiny_embed_dir, device="cpu", dtype="float32")
    compiled = VisualizedBGEEmbedding.from_local(
        tiny_embed_dir, device="cpu", dtype="float32", compile=True
    )
    layers = [*compiled.model.tower.blocks, *compiled.model.text.encoder.layer]
    assert all(layer._compiled_call_impl is not None for layer in layers)  # compiled, not eager
    assert _cos(eager.get_image_embedding(img), compiled.get_image_embedding(img)) > 0.9999
    a, b = eager.get_text_embedding("red shoes"), compiled.get_text_embedding("red shoes")
    assert _cos(a, b) > 0.9999


# -- the GPU benchmark ------------------------------------------------------------------------
def test_gpu_benchmark_without_cuda_says_so_and_exits_0() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the benchmark would run for real")
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks", "gpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.strip() and line != "== gpu"]
    assert lines == ["benchmarks gpu: no CUDA device on this machine; nothing measured"]


def test_gpu_benchmark_code_path_on_cpu() -> None:
    """The GPU benchmark's measurements, driven on the CPU with the tiny model."""
    from benchmarks.gpu import measure

    out = measure("cpu", tiny=True, batches=(1, 4), n_ingest=6, steps=1)
    for dt in ("float32", "bfloat16"):
        assert set(out["images_per_s"][dt]) == {"1", "4"}
        assert all(r > 0 for r in out["images_per_s"][dt].values())
        assert out["ingest_images_per_s"][dt] > 0
        assert set(out["query_embed"][dt]) == {"text_p50_ms", "image_p50_ms", "composed_p50_ms"}
    assert out["ratio_bf16_vs_fp32"]["4"] > 0


def test_decode_threads_default_by_device(tiny_embedding) -> None:
    import os

    from ingestion.pipeline import Ingestor, default_workers

    assert default_workers("cpu") == 2
    assert default_workers("cuda:0") == max(2, min(32, os.cpu_count() or 2))
    assert Ingestor(embedding=tiny_embedding, store=None).workers == 2  # type: ignore[arg-type]


def test_fused_attention_in_tower_and_text_model(tiny_embedding) -> None:
    """SDPA in the text model and timm's fused attention in the EVA tower (GPU-ready)."""
    model = tiny_embedding.model
    assert model.text.config._attn_implementation == "sdpa"
    assert all(block.attn.fused_attn for block in model.tower.blocks)
