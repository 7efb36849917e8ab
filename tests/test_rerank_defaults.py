"""Rerank where it can run: the pinned Phi-3.5 Vision revision by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.core.settings import DEFAULT_VLM_MODEL, DEFAULT_VLM_REVISION, Settings, load_settings
from rag.errors import ConfigError
from rag.factory import build_reranker, vlm_problem
from rag.rerank.backends.phi3v import Phi3VisionVLM

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
