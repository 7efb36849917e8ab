from pathlib import Path

import pytest

from rag.core.settings import Settings, load_settings
from rag.errors import ConfigError


def test_defaults(clean_env: Path) -> None:
    s = Settings()
    assert s.milvus_uri == "./data/mmsearch.db"
    assert s.top_k == 9
    assert s.rerank is True
    assert s.device == "auto" and s.dtype == "auto"
    assert s.vlm_backend == "phi3v"
    assert s.milvus_token is None and s.milvus_token_value == ""


def test_env_overrides(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSEARCH_MILVUS_URI", "http://milvus:19530")
    monkeypatch.setenv("MMSEARCH_MILVUS_TOKEN", "root:secret")
    monkeypatch.setenv("MMSEARCH_TOP_K", "5")
    monkeypatch.setenv("MMSEARCH_RERANK", "false")
    monkeypatch.setenv("MMSEARCH_DEVICE", "CPU")
    monkeypatch.setenv("MMSEARCH_INDEX_TYPE", "hnsw")
    s = Settings()
    assert s.milvus_uri == "http://milvus:19530"
    assert s.top_k == 5 and s.rerank is False
    assert s.device == "cpu" and s.index_type == "HNSW"
    assert s.milvus_token_value == "root:secret"
    # The secret never shows in repr/str or a plain dump.
    assert "secret" not in repr(s) and "secret" not in str(s.model_dump())


def test_dotenv_file(clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "MMSEARCH_COLLECTION=shoes\nMMSEARCH_EMBED_BATCH_SIZE=4\nMMSEARCH_VLM_BACKEND=openai\n"
    )
    s = Settings()
    assert s.collection == "shoes" and s.embed_batch_size == 4 and s.vlm_backend == "openai"


def test_env_beats_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("MMSEARCH_COLLECTION=from_file\n")
    monkeypatch.setenv("MMSEARCH_COLLECTION", "from_env")
    assert Settings().collection == "from_env"


def test_invalid_value_is_one_line_config_error(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMSEARCH_TOP_K", "0")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "MMSEARCH_TOP_K" in str(e.value) and "\n" not in str(e.value)


def test_env_example_documents_every_setting() -> None:
    example = (Path(__file__).parent.parent / ".env.example").read_text().splitlines()
    names = set()
    for i, line in enumerate(example):
        stripped = line.lstrip("# ").strip()
        if stripped.startswith("MMSEARCH_") and "=" in stripped:
            names.add(stripped.split("=", 1)[0].removeprefix("MMSEARCH_").lower())
            assert example[i - 1].startswith("# "), f"no description above {line!r}"
    assert names == set(Settings.model_fields)
