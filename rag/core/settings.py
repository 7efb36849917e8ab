"""All configuration, read once from the environment (prefix ``MMSEARCH_``) and ``.env``.

Only factories and the CLI read settings; components take plain constructor arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DTypeName = Literal["auto", "float32", "float16", "bfloat16"]
VLMBackendName = Literal["phi3v", "hf", "openai"]
IndexTypeName = Literal["AUTO", "FLAT", "HNSW"]

DEFAULT_VLM_MODEL = "microsoft/Phi-3.5-vision-instruct"
# The commit of DEFAULT_VLM_MODEL pinned by default (a commit widely pinned in public code),
# so that trusting its remote code means trusting this exact code. It is the default revision
# for that repo only: another model id has no default revision.
DEFAULT_VLM_REVISION = "12b77fb40b63a2c73c68243d3f767aab688a1b2a"


class Settings(BaseSettings):
    """mmsearch settings; every field maps to ``MMSEARCH_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(
        env_prefix="MMSEARCH_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    milvus_uri: str = Field(
        default="./data/mmsearch.db",
        description="Milvus Lite file path (*.db) or server URI (http://host:19530).",
    )
    milvus_token: SecretStr | None = Field(
        default=None, description="Milvus server token ('user:password' or API key)."
    )
    collection: str = Field(default="mmsearch_images", description="Milvus collection name.")
    index_type: IndexTypeName = Field(
        default="AUTO",
        description="Vector index for new collections: AUTO (FLAT on Milvus Lite, HNSW on a "
        "server), FLAT (exact) or HNSW.",
    )
    embed_model: str = Field(
        default="base",
        description="Visualized BGE variant name (base, m3) or a local model directory.",
    )
    models_dir: Path = Field(
        default=Path("./models"),
        description="Where `mmsearch models pull` puts model directories.",
    )
    data_dir: Path = Field(default=Path("./data"), description="Downloaded data sets and caches.")
    device: DeviceName = Field(default="auto", description="auto = cuda > mps > cpu.")
    dtype: DTypeName = Field(
        default="auto",
        description="auto = bf16 on CUDA (fp16 without bf16), fp16 on MPS, bf16 on a CPU with "
        "native bf16 matrix support (AMX, or avx512_bf16 where a micro-benchmark says it is "
        "faster), else fp32.",
    )
    embed_batch_size: int | None = Field(
        default=None, ge=1, description="Images per embedding batch (unset: 64 on CUDA, else 16)."
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the embedding model's layers (faster on a GPU after a "
        "slow first batch).",
    )
    top_k: int = Field(default=9, ge=1, le=1000, description="Candidates retrieved per query.")
    hybrid_ranker: Literal["rrf", "weighted"] = Field(
        default="rrf",
        description="Hybrid search fusion: rrf (reciprocal rank fusion) or weighted scores.",
    )
    hybrid_rrf_k: int = Field(default=60, ge=1, description="RRF constant k (rrf ranker).")
    hybrid_alpha: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Weighted ranker: weight of the dense search; BM25 gets 1 - alpha.",
    )
    hybrid_candidates: int = Field(
        default=50, ge=1, le=1000, description="Depth of each hybrid search leg before fusion."
    )
    rerank: bool = Field(default=True, description="Rerank retrieved candidates with the VLM.")
    rerank_strategy: Literal["listwise", "first-token"] = Field(
        default="listwise",
        description="listwise (generate a ranking) or first-token (one prefill, fastest).",
    )
    rerank_passes: int = Field(
        default=1, ge=1, le=10, description="Shuffled grid passes aggregated (position bias)."
    )
    vlm_backend: VLMBackendName = Field(default="phi3v", description="Reranker VLM backend.")
    vlm_model: str = Field(
        default=DEFAULT_VLM_MODEL,
        description="VLM: Hub id or local directory (phi3v/hf), or served model name (openai).",
    )
    vlm_revision: str | None = Field(
        default=None,
        description="Pinned Hub revision (commit) for remote model code; required to trust it. "
        f"Unset: {DEFAULT_VLM_REVISION} for {DEFAULT_VLM_MODEL}, none for any other model.",
    )
    vlm_trust_remote_code: bool = Field(
        default=False, description="Opt in to run the VLM's own Python code from its repo."
    )
    caption_num_crops: int = Field(
        default=4,
        ge=1,
        le=16,
        description="Phi-3 Vision: most 336-px crops of the query image for its caption "
        "(4: ~760 image tokens; 16: up to ~2,500).",
    )
    rerank_num_crops: int = Field(
        default=16,
        ge=1,
        le=16,
        description="Phi-3 Vision: most 336-px crops of the candidate grid for the ranking "
        "and the reason.",
    )
    vlm_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint for the openai backend."
    )
    vlm_api_key: SecretStr | None = Field(default=None, description="API key for vlm_base_url.")
    vlm_timeout_s: float = Field(default=120.0, gt=0, description="Per-call VLM timeout.")
    # -- fetching image URLs and `mmsearch serve` --------------------------------------
    allow_private_urls: bool = Field(
        default=False,
        description="Fetch image URLs on private, loopback and link-local addresses (SSRF "
        "guard off; for intranet catalogs).",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="`mmsearch serve`: key for /api/ingest, and for all of /api when bound to "
        "a non-loopback address.",
    )
    max_upload_mb: float = Field(
        default=20.0, gt=0, le=1024, description="`mmsearch serve`: request body cap in MB."
    )
    cors_origins: str = Field(
        default="",
        description="`mmsearch serve`: comma-separated origins allowed by CORS (empty: off).",
    )

    @field_validator("milvus_uri")
    @classmethod
    def _uri_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @field_validator(
        "device",
        "dtype",
        "vlm_backend",
        "index_type",
        "rerank_strategy",
        "hybrid_ranker",
        mode="before",
    )
    @classmethod
    def _normalise_case(cls, v: object, info: ValidationInfo) -> object:
        if isinstance(v, str):
            return v.upper() if info.field_name == "index_type" else v.lower()
        return v

    @field_validator("vlm_revision", mode="before")
    @classmethod
    def _blank_revision_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _default_revision_for_default_model(self) -> Settings:
        # Only for the repo it was reviewed for: a pin must never follow a changed model id.
        if self.vlm_revision is None and self.vlm_model == DEFAULT_VLM_MODEL:
            self.vlm_revision = DEFAULT_VLM_REVISION
        return self

    @property
    def milvus_token_value(self) -> str:
        """The token as a plain string for the client ('' when unset)."""
        return self.milvus_token.get_secret_value() if self.milvus_token else ""


def load_settings(**overrides: object) -> Settings:
    """Read settings from env/.env, turning validation errors into a one-line ConfigError."""
    from pydantic import ValidationError

    from rag.errors import ConfigError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        problems = "; ".join(
            f"MMSEARCH_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from e
