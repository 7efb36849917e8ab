"""Rerank where it can run: the pinned Phi-3.5 Vision revision by default, crops per call
(caption vs grid)."""

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
