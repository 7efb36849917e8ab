"""Where embedding models come from: resolve a setting to a local directory, pull from the Hub.

A local model directory holds everything needed offline (see ``rag.embedding.checkpoint``):
``mmsearch_model.json``, the text model's folder (config + tokenizer) and one ``.pth``.
Downloads go to a temporary folder beside the destination and are moved into place only when
complete and verified, so an interrupted pull never leaves a half-written model behind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from rag.embedding.checkpoint import MODEL_JSON, VARIANTS, ModelDirSpec
from rag.errors import ConfigError, DownloadError, ModelLoadError

logger = logging.getLogger(__name__)

CHECKPOINT_REPO = "BAAI/bge-visualized"
# Pinned Hub revisions of the text models (commits in wide use). The checkpoint repo's commit
# could not be looked up from the build machine (no Hub access): its pull is guarded by the
# checkpoint's exact byte size instead, and `mmsearch models pull --revision` pins it.
REVISIONS: dict[str, str] = {
    "BAAI/bge-base-en-v1.5": "a5beb1e3e68b9ab74eb54cfd186867f64f240e1a",
    "BAAI/bge-m3": "5617a9f61b028005a4858fdac845db406aefb181",
    CHECKPOINT_REPO: "main",
}
TEXT_FILES = (
    "config.json",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
)


def default_dir(variant: str, models_dir: Path) -> Path:
    return Path(models_dir) / f"visualized-bge-{variant}"


def resolve_embed_model_dir(setting: str, models_dir: Path) -> Path:
    """``MMSEARCH_EMBED_MODEL`` -> a model directory (a variant name maps into models_dir)."""
    if setting in VARIANTS:
        return default_dir(setting, models_dir)
    path = Path(setting).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"MMSEARCH_EMBED_MODEL={setting!r} is neither a variant ({', '.join(VARIANTS)}) nor "
            "an existing directory"
        )
    return path


def write_spec(dest: Path, variant: str, text_dir_name: str, revision: str) -> None:
    spec = VARIANTS[variant]
    (dest / MODEL_JSON).write_text(
        ModelDirSpec(
            variant=variant,
            model_id=f"visualized-bge-{variant}",
            text_model_dir=text_dir_name,
            checkpoint=spec.checkpoint,
            vision=spec.vision,
        ).to_json()
    )


def _offline_help(variant: str, dest: Path) -> str:
    spec = VARIANTS[variant]
    return (
        f"copy the files in by hand: {spec.checkpoint} (from {CHECKPOINT_REPO}) and the "
        f"{spec.text_repo} folder (config.json + tokenizer files), then run "
        f"`mmsearch models import {variant} --checkpoint FILE --text-model FOLDER --dir {dest}`"
    )


def pull(variant: str, dest: Path, *, revision: str | None = None, force: bool = False) -> Path:
    """Download a published variant into ``dest`` (verified, atomic)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    spec = VARIANTS[variant]
    if (dest / MODEL_JSON).exists() and not force:
        logger.info("%s already present", dest)
        return dest
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError as e:  # pragma: no cover - a hard dependency
        raise DownloadError("huggingface_hub is not installed") from e
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".pull-", dir=dest.parent))
    try:
        text_name = spec.text_repo.split("/")[-1]
        try:
            snapshot_download(
                spec.text_repo,
                revision=REVISIONS[spec.text_repo],
                allow_patterns=list(TEXT_FILES),
                local_dir=work / text_name,
            )
            ckpt = Path(
                hf_hub_download(
                    CHECKPOINT_REPO,
                    spec.checkpoint,
                    revision=revision or REVISIONS[CHECKPOINT_REPO],
                    local_dir=work,
                )
            )
        except Exception as e:  # offline, 404, auth: all end the same way for the user
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise DownloadError(
                f"cannot download the {variant} model from the Hugging Face Hub ({first}); "
                + _offline_help(variant, dest)
            ) from e
        size = ckpt.stat().st_size
        if size != spec.checkpoint_bytes:
            raise DownloadError(
                f"downloaded {spec.checkpoint} has {size:,} bytes, expected "
                f"{spec.checkpoint_bytes:,}; try again"
            )
        shutil.rmtree(work / ".cache", ignore_errors=True)
        shutil.rmtree(work / text_name / ".cache", ignore_errors=True)
        write_spec(work, variant, text_name, revision or REVISIONS[CHECKPOINT_REPO])
        if dest.exists():
            shutil.rmtree(dest)
        work.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already after a successful rename
    return dest


def import_files(variant: str, checkpoint: Path, text_model: Path, dest: Path) -> Path:
    """Assemble a model directory from files copied in by hand (offline machines)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if not checkpoint.is_file():
        raise ModelLoadError(f"checkpoint {checkpoint} does not exist")
    if not (text_model / "config.json").is_file():
        raise ModelLoadError(f"text model folder {text_model} has no config.json")
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.pth"):
        old.unlink()
    target_text = dest / text_model.name
    if target_text.resolve() != text_model.resolve():
        shutil.copytree(text_model, target_text, dirs_exist_ok=True)
    shutil.copy2(checkpoint, dest / VARIANTS[variant].checkpoint)
    write_spec(dest, variant, text_model.name, "local")
    return dest
