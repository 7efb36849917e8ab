"""The official checkpoint format: local model directories, published variants, and the strict
loading of ``Visualized_*.pth`` files onto our module (every tensor used, every shape checked).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rag.core.device import DTypeChoice, choose_dtype, resolve_device
from rag.embedding.model import VisionConfig, VisualizedBGE
from rag.errors import ModelLoadError

logger = logging.getLogger(__name__)

MODEL_JSON = "mmsearch_model.json"
FORMAT = "visualized-bge"
# Checkpoint tensors that the model does not use: the EVA-CLIP projection head and logit scale
# (CLIP training leftovers) and buffers that are recomputed (rotary tables, position-id buffers).
_UNUSED_SUFFIXES = ("rope.freqs_cos", "rope.freqs_sin", "position_ids", "token_type_ids")
# Reference checkpoint prefix -> our module prefix for the text model.
TEXT_PREFIXES = {
    "bge_embeddings.": "text.embeddings.",
    "bge_encoder.": "text.encoder.",
    "bge_pooler.": "text.pooler.",
}
_UNUSED_KEYS = (
    "model_visual.logit_scale",
    "model_visual.visual.head.weight",
    "model_visual.visual.head.bias",
)


@dataclass(frozen=True)
class VariantSpec:
    """What a published variant needs: text model repo, checkpoint file, tower, dimension."""

    name: str
    text_repo: str
    checkpoint: str
    checkpoint_bytes: int
    dim: int
    vision: VisionConfig


VARIANTS: dict[str, VariantSpec] = {
    "base": VariantSpec(
        name="base",
        text_repo="BAAI/bge-base-en-v1.5",
        checkpoint="Visualized_base_en_v1.5.pth",
        checkpoint_bytes=392_860_018,
        dim=768,
        vision=VisionConfig(width=768, depth=12, patch_size=16),
    ),
    "m3": VariantSpec(
        name="m3",
        text_repo="BAAI/bge-m3",
        checkpoint="Visualized_m3.pth",
        checkpoint_bytes=1_746_155_890,
        dim=1024,
        vision=VisionConfig(width=1024, depth=24, patch_size=14),
    ),
}


@dataclass(frozen=True)
class ModelDirSpec:
    """Contents of ``mmsearch_model.json`` in a local model directory."""

    variant: str
    model_id: str
    text_model_dir: str
    checkpoint: str
    vision: VisionConfig = field(default_factory=VisionConfig)
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, model_dir: Path) -> ModelDirSpec:
        path = model_dir / MODEL_JSON
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, expected {FORMAT!r}")
            vision = VisionConfig(**raw.pop("vision", {}))
            return cls(vision=vision, **raw)
        except FileNotFoundError as e:
            raise ModelLoadError(
                f"{model_dir} is not an mmsearch model directory (no {MODEL_JSON}); "
                "run `mmsearch models pull base` or see README 'Models'"
            ) from e
        except (ValueError, TypeError) as e:
            raise ModelLoadError(f"{path} is invalid: {e}") from e


def map_reference_state_dict(
    state: dict[str, torch.Tensor], model: VisualizedBGE
) -> dict[str, torch.Tensor]:
    """Rename the reference checkpoint's keys onto our modules; refuse anything unknown."""
    from timm.models.eva import checkpoint_filter_fn

    out: dict[str, torch.Tensor] = {}
    visual: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelLoadError(f"checkpoint entry {key!r} is not a tensor")
        if key in _UNUSED_KEYS or key.endswith(_UNUSED_SUFFIXES):
            continue
        text_prefix = next((p for p in TEXT_PREFIXES if key.startswith(p)), None)
        if text_prefix is not None:
            out[TEXT_PREFIXES[text_prefix] + key.removeprefix(text_prefix)] = value
        elif key.startswith("visual_proj."):
            out[key] = value
        elif key.startswith("model_visual.visual."):
            visual[key.removeprefix("model_visual.")] = value
        else:
            raise ModelLoadError(f"unexpected checkpoint key {key!r}")
    if not visual:
        raise ModelLoadError("checkpoint has no vision tower (model_visual.visual.*) keys")
    for key, value in checkpoint_filter_fn(visual, model.tower).items():
        out["tower." + key] = value
    return out


def load_checkpoint(path: Path, model: VisualizedBGE) -> None:
    """Load an official-format ``.pth`` strictly: every tensor used, every shape checked."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError as e:
        raise ModelLoadError(f"checkpoint {path} does not exist") from e
    except Exception as e:  # pickle/zip errors for truncated or foreign files
        raise ModelLoadError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}); download it again "
            "(mmsearch models pull)"
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"checkpoint {path} does not hold a state_dict")
    mapped = map_reference_state_dict(state, model)
    own = model.state_dict()
    for key, value in mapped.items():
        if key not in own:
            raise ModelLoadError(
                f"checkpoint {path} does not fit this model: unexpected tensor {key!r} "
                "(wrong variant? check mmsearch_model.json)"
            )
        if tuple(own[key].shape) != tuple(value.shape):
            raise ModelLoadError(
                f"checkpoint {path} does not fit this model: {key!r} has shape "
                f"{tuple(value.shape)}, expected {tuple(own[key].shape)} (wrong variant?)"
            )
    missing = [k for k in own if k not in mapped and not k.endswith(_UNUSED_SUFFIXES)]
    if missing:
        raise ModelLoadError(
            f"checkpoint {path} is incomplete: missing {missing[0]!r} "
            f"({len(missing)} tensors missing; wrong variant or truncated file?)"
        )
    model.load_state_dict(mapped, strict=False)


def load_model_dir(
    model_dir: Path, *, device: str = "auto", dtype: str = "auto"
) -> tuple[VisualizedBGE, Any, ModelDirSpec, DTypeChoice]:
    """Build the model from a local directory, load its checkpoint; returns (model, tokenizer,
    spec, the dtype chosen and why). The model is in eval mode on the chosen device and dtype."""
    from transformers import AutoConfig, AutoTokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"model directory {model_dir} does not exist; run `mmsearch models pull base` "
            "or set MMSEARCH_EMBED_MODEL to a local model directory"
        )
    spec = ModelDirSpec.read(model_dir)
    text_dir = model_dir / spec.text_model_dir
    ckpt = model_dir / spec.checkpoint
    pths = sorted(p.name for p in model_dir.glob("*.pth"))
    if pths != [spec.checkpoint]:
        raise ModelLoadError(
            f"{model_dir} must hold exactly one checkpoint, {spec.checkpoint!r}; found {pths}"
        )
    try:
        text_config = AutoConfig.from_pretrained(text_dir, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(text_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"text model folder {text_dir} is missing or incomplete (needs config.json and "
            f"tokenizer files): {str(e).splitlines()[0][:200]}"
        ) from e
    dev = resolve_device(device)
    choice = choose_dtype(dtype, dev)
    text_config._attn_implementation = "sdpa"  # fused attention (the tower's timm EVA uses it too)
    model = VisualizedBGE(text_config, spec.vision)
    load_checkpoint(ckpt, model)
    model.eval().to(device=dev, dtype=choice.dtype)
    n_tokens = spec.vision.num_patches
    if n_tokens + 2 > model.max_positions:
        raise ModelLoadError(
            f"text model has {model.max_positions} positions, fewer than the {n_tokens} image "
            "tokens need"
        )
    logger.info(
        "loaded %s (%s) on %s in %s: %s",
        spec.model_id,
        spec.variant,
        dev,
        choice.name,
        choice.reason,
    )
    return model, tokenizer, spec, choice


def read_model_facts(model_dir: Path) -> tuple[str, int, int]:
    """(model id, embedding dimension, image size) of a model directory, read from its JSON
    files without loading any weights (a Ray driver needs them; its workers load the model)."""
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"model directory {model_dir} does not exist; run `mmsearch models pull base` "
            "or set MMSEARCH_EMBED_MODEL to a local model directory"
        )
    spec = ModelDirSpec.read(model_dir)
    try:
        config = AutoConfig.from_pretrained(model_dir / spec.text_model_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"text model folder {model_dir / spec.text_model_dir} is missing or incomplete: "
            f"{str(e).splitlines()[0][:200]}"
        ) from e
    return spec.model_id, int(config.hidden_size), int(spec.vision.image_size)
