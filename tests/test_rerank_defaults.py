"""Rerank where it can run: the pinned Phi-3.5 Vision revision by default, crops per call
(caption vs grid), and the demo's GPU decision (stubbed both ways; no GPU here)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from rag.core.settings import DEFAULT_VLM_MODEL, DEFAULT_VLM_REVISION, Settings, load_settings
from rag.errors import ConfigError
from rag.factory import _vlm_loader, build_reranker, vlm_problem
from rag.rerank.backends import phi3v
from rag.rerank.backends.phi3v import Phi3VisionVLM
from rag.rerank.postprocessor import VLMReranker
from tests.test_reranker import _nodes, _query

PIN = "12b77fb40b63a2c73c68243d3f767aab688a1b2a"
OTHER = "microsoft/Phi-3-vision-128k-instruct"


# -- the pinned revision ----------------------------------------------------------------------
def test_pinned_revision_is_the_default(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (DEFAULT_VLM_MODEL, DEFAULT_VLM_REVISION) == ("microsoft/Phi-3.5-vision-instruct", PIN)
    assert Settings().vlm_revision == PIN
    monkeypatch.setenv("MMSEARCH_VLM_REVISION", "")  # an empty line in .env is "unset"
    assert Settings().vlm_revision == PIN
    monkeypatch.setenv("MMSEARCH_VLM_REVISION", "0123abcd")  # a user's pin wins
    assert Settings().vlm_revision == "0123abcd"


def test_another_model_gets_no_default_revision(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMSEARCH_VLM_MODEL", OTHER)
    s = load_settings(vlm_trust_remote_code=True)
    assert s.vlm_revision is None  # the pin never follows a changed model id
    problem = vlm_problem(s)
    assert problem is not None and "MMSEARCH_VLM_REVISION=<commit>" in problem
    assert "MMSEARCH_VLM_TRUST_REMOTE_CODE" not in problem  # already opted in
    with pytest.raises(ConfigError, match="MMSEARCH_VLM_REVISION"):
        build_reranker(s)
    # the loader's own guard, for callers that skip vlm_problem
    with pytest.raises(ConfigError, match="pinned revision"):
        Phi3VisionVLM.from_pretrained(OTHER, trust_remote_code=True, revision=None)


def test_default_skip_detail_asks_only_for_trust(clean_env: Path) -> None:
    assert vlm_problem(Settings()) == (
        "no VLM configured: Phi-3 Vision runs its own code from the Hub "
        "(microsoft/Phi-3.5-vision-instruct@12b77fb40b63); set "
        "MMSEARCH_VLM_TRUST_REMOTE_CODE=true, or MMSEARCH_VLM_BACKEND=openai with "
        "MMSEARCH_VLM_BASE_URL"
    )
    assert vlm_problem(Settings(vlm_trust_remote_code=True)) is None
    # a moving branch is no pin, even for the default model
    problem = vlm_problem(Settings(vlm_trust_remote_code=True, vlm_revision="main"))
    assert problem is not None and "MMSEARCH_VLM_REVISION=<commit>" in problem


# -- crops per call -------------------------------------------------------------------------
def test_crop_settings_parse_and_validate(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert (s.caption_num_crops, s.rerank_num_crops) == (4, 16)
    monkeypatch.setenv("MMSEARCH_CAPTION_NUM_CROPS", "2")
    monkeypatch.setenv("MMSEARCH_RERANK_NUM_CROPS", "9")
    s = Settings()
    assert (s.caption_num_crops, s.rerank_num_crops) == (2, 9)
    for name, bad in [(n, b) for n in ("CAPTION", "RERANK") for b in ("0", "17", "x")]:
        monkeypatch.setenv(f"MMSEARCH_{name}_NUM_CROPS", bad)
        with pytest.raises(ConfigError, match=f"MMSEARCH_{name}_NUM_CROPS"):
            load_settings()
        monkeypatch.delenv(f"MMSEARCH_{name}_NUM_CROPS")


class _Tokenizer:
    """Digits and ',' are single tokens (the constrained path needs that); decodes to ``reply``."""

    pad_token_id = 0
    reply = "2, 1, 3"

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        return messages[0]["content"]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [10 + int(text)] if text.isdigit() else [5]

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return self.reply


class _RecordingProcessor:
    """Phi-3.5's processor reads ``image_processor.num_crops`` when it preprocesses an image:
    record that value on every call (None for a call without an image)."""

    def __init__(self) -> None:
        self.image_processor = SimpleNamespace(num_crops=16)  # as loaded
        self.tokenizer = _Tokenizer()
        self.crops_seen: list[int | None] = []

    def __call__(self, text: str, images: Any = None, return_tensors: str = "pt") -> Any:
        import torch
        from transformers import BatchFeature

        self.crops_seen.append(self.image_processor.num_crops if images else None)
        ids = torch.tensor([[1, 2, 3]])
        return BatchFeature({"input_ids": ids, "attention_mask": torch.ones_like(ids)})


class _Model:
    """Answers every generate with two new tokens and scores from zeros."""

    generation_config = SimpleNamespace(eos_token_id=[32007, 32000])

    def __init__(self) -> None:
        import torch

        self.device = torch.device("cpu")

    def eval(self) -> _Model:
        return self

    def generate(self, input_ids: Any, **kwargs: Any) -> Any:
        import torch

        return torch.cat([input_ids, torch.tensor([[7, 8]])], dim=1)

    def __call__(self, input_ids: Any, **kwargs: Any) -> Any:
        import torch

        return SimpleNamespace(logits=torch.zeros(1, input_ids.shape[1], 40))


def _phi3v(**crops: int) -> tuple[Phi3VisionVLM, _RecordingProcessor]:
    processor = _RecordingProcessor()
    vlm = Phi3VisionVLM(model=_Model(), processor=processor, end_token_ids=[32007], **crops)
    return vlm, processor


def test_caption_and_grid_reach_the_processor_with_their_crops(tmp_path: Path) -> None:
    vlm, processor = _phi3v()  # the defaults: caption 4, grid 16
    outcome = VLMReranker(vlm=vlm).rerank(_nodes(tmp_path, 3), _query(tmp_path))
    assert outcome.status == "ok" and outcome.reason is not None
    assert processor.crops_seen == [4, 16, 16]  # caption, constrained ranking, reason
    # values from settings reach it the same way; first-token scoring is a grid call too
    vlm, processor = _phi3v(caption_num_crops=2, rerank_num_crops=9)
    VLMReranker(vlm=vlm, strategy="first-token").rerank(_nodes(tmp_path, 3), _query(tmp_path))
    assert processor.crops_seen == [2, 9]
    vlm.generate("no image", None, detail="low")  # a text-only call leaves the crops alone
    assert processor.crops_seen == [2, 9, None] and processor.image_processor.num_crops == 9


def test_crop_settings_are_wired_into_the_phi3v_loader(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[dict[str, Any]] = []

    def fake_load_pretrained(model_id: str, auto_class: str, **kwargs: Any) -> tuple[Any, Any]:
        loads.append({"model_id": model_id, **kwargs})
        return _Model(), _RecordingProcessor()

    monkeypatch.setattr(phi3v, "load_pretrained", fake_load_pretrained)
    monkeypatch.setenv("MMSEARCH_CAPTION_NUM_CROPS", "3")
    vlm = _vlm_loader(load_settings(vlm_trust_remote_code=True))()
    assert isinstance(vlm, Phi3VisionVLM) and vlm.num_crops == {"low": 3, "high": 16}
    (load,) = loads
    assert (load["model_id"], load["revision"]) == (DEFAULT_VLM_MODEL, PIN)
    assert load["processor_kwargs"] == {"num_crops": 16}  # the load-time value: the grid's
    vlm.generate("describe", Image.new("RGB", (64, 64)), detail="low")
    assert vlm.processor.crops_seen == [3]


# -- the demo's GPU decision ----------------------------------------------------------------
def test_cuda_memory_probe_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from rag.app.demo import cuda_memory_gb

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_memory_gb() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    props = SimpleNamespace(total_memory=12_622_168_064)  # a card sold as 12 GB
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    assert cuda_memory_gb() == pytest.approx(12.622, abs=1e-3)


def test_demo_trusts_the_pin_only_on_a_big_enough_cuda_gpu(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.app.demo import choose_rerank

    probes: list[int] = []

    def gpu(gb: float | None) -> Any:
        def probe() -> float | None:
            probes.append(1)
            return gb

        return probe

    yes = choose_rerank(Settings(), rerank=None, gpu_memory_gb=gpu(24.0))
    assert yes.trust and yes.skip_detail is None
    assert yes.note == (
        "rerank: this demo trusts the pinned remote code of microsoft/Phi-3.5-vision-instruct@"
        "12b77fb40b63a2c73c68243d3f767aab688a1b2a (CUDA GPU, 24 GB); turn it off with "
        "MMSEARCH_VLM_TRUST_REMOTE_CODE=false or --no-rerank"
    )
    for gb, found in ((None, "no CUDA GPU here"), (8.0, "this GPU has 8.0 GB")):
        no = choose_rerank(Settings(), rerank=None, gpu_memory_gb=gpu(gb))
        assert not no.trust and no.note is None
        assert no.skip_detail == (
            f"the demo runs Phi-3.5 Vision only on a CUDA GPU with >= 12 GB ({found}); set "
            "MMSEARCH_VLM_TRUST_REMOTE_CODE=true to rerank anyway, or MMSEARCH_VLM_BACKEND=openai "
            "with MMSEARCH_VLM_BASE_URL"
        )
    on_cpu = choose_rerank(Settings(device="cpu"), rerank=None, gpu_memory_gb=gpu(80.0))
    assert not on_cpu.trust and "MMSEARCH_DEVICE=cpu" in (on_cpu.skip_detail or "")
    probes.clear()
    # The user's own choices stand, and the GPU is not even asked about.
    monkeypatch.setenv("MMSEARCH_VLM_TRUST_REMOTE_CODE", "false")
    assert "vlm_trust_remote_code" in Settings().model_fields_set
    monkeypatch.delenv("MMSEARCH_VLM_TRUST_REMOTE_CODE")
    for s, rerank in (
        (load_settings(vlm_trust_remote_code=False), None),
        (Settings(), False),  # --no-rerank
        (Settings(rerank=False), None),
        (Settings(vlm_model=OTHER, vlm_revision="abc123"), None),
        (Settings(vlm_revision="abc123"), None),  # another commit of the default repo
        (Settings(vlm_backend="openai", vlm_base_url="http://h/v1"), None),
    ):
        assert choose_rerank(s, rerank=rerank, gpu_memory_gb=gpu(80.0)) == type(yes)()
    assert probes == []


def _fake_amazon_subset(data_dir: Path) -> None:
    from ingestion.datasets import AMAZON_SUBSET_DIR
    from tests.helpers import write_images

    write_images(data_dir / AMAZON_SUBSET_DIR / "images", 4, ext="jpg")
    Image.new("RGB", (90, 60), (200, 150, 40)).save(data_dir / AMAZON_SUBSET_DIR / "leopard.jpg")


@pytest.mark.parametrize("gpu_gb", [24.0, None], ids=["cuda-24GB", "no-cuda"])
def test_demo_says_once_what_it_does_with_the_rerank(
    gpu_gb: float | None, clean_env: Path, tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mmsearch demo` end to end (the catalog already on disk, the tiny embedding model): on a
    big enough CUDA GPU one line says it trusts the pinned code, and the rerank really runs
    with it (here it cannot load offline: fallback naming the pinned repo); elsewhere one line
    says the rerank was skipped and what to set."""
    from typer.testing import CliRunner

    from rag.app.cli import app

    _fake_amazon_subset(clean_env / "data")
    monkeypatch.setenv("MMSEARCH_EMBED_MODEL", str(tiny_embed_dir))
    monkeypatch.setattr("rag.app.demo.cuda_memory_gb", lambda: gpu_gb)
    res = CliRunner().invoke(app, ["demo"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())  # rich wraps stdout at 80 columns here
    trust_lines = [line for line in res.stderr.splitlines() if "trusts the pinned" in line]
    if gpu_gb:
        assert len(trust_lines) == 1 and f"instruct@{PIN}" in trust_lines[0]
        assert "rerank fallback: VLM unavailable: cannot load the VLM" in out
        assert f"microsoft/Phi-3.5-vision-instruct@{PIN}" in out
        assert "MMSEARCH_VLM_TRUST_REMOTE_CODE=true mmsearch search" in out  # search again
    else:
        assert trust_lines == []
        assert out.count("rerank skipped") == 1 and out.count("TRUST_REMOTE_CODE") == 1
        assert "rerank skipped: the demo runs Phi-3.5 Vision only on a CUDA GPU" in out
        assert "MMSEARCH_VLM_TRUST_REMOTE_CODE=true mmsearch search" not in out


def test_synthetic_demo_never_adds_the_vlm(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.app import demo

    monkeypatch.setattr(demo, "cuda_memory_gb", lambda: 80.0)
    plan = demo.prepare(Settings(data_dir=clean_env / "d"), synthetic=True, say=lambda m: None)
    assert plan.rerank is None and not plan.settings.vlm_trust_remote_code
    assert "vlm_trust_remote_code" not in plan.overrides
