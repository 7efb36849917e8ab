"""Visualized BGE (VISTA, arXiv 2406.04292) as a torch module, and its checkpoint loading.

The text side is a `transformers` BERT (bge-base-en-v1.5) or XLM-RoBERTa (bge-m3); the vision
tower is timm's EVA02 (the EVA-CLIP tower); the official ``.pth`` checkpoints load unchanged.
Layout of a composed (image + text) input, as in the reference implementation:

    [CLS] + visual_proj(patch tokens) (+ BERT positions 1..N, + embedding LayerNorm)
          + text tokens without CLS (positions continue at N+1)

Image-only is the same path with an empty text; text-only is the plain text model. Pooling is
CLS, then L2 normalisation. See DESIGN.md §3.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rag.errors import ModelLoadError

logger = logging.getLogger(__name__)

MODEL_JSON = "mmsearch_model.json"
FORMAT = "visualized-bge"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
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
class VisionConfig:
    """EVA02 vision tower hyper-parameters (EVA-CLIP's ``vision_cfg``)."""

    width: int = 768
    depth: int = 12
    head_width: int = 64
    patch_size: int = 16
    mlp_ratio: float = 2.6667
    image_size: int = 224
    pt_hw_seq_len: int = 16

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


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


def build_tower(cfg: VisionConfig) -> nn.Module:
    """timm's EVA02 with EVA-CLIP's options (SwiGLU + sub-LN, separate q/k/v, 2-D RoPE)."""
    from timm.models.eva import Eva

    return Eva(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_classes=0,
        embed_dim=cfg.width,
        depth=cfg.depth,
        num_heads=cfg.width // cfg.head_width,
        qkv_fused=False,
        mlp_ratio=cfg.mlp_ratio,
        swiglu_mlp=True,
        scale_mlp=True,
        scale_attn_inner=True,
        use_rot_pos_emb=True,
        ref_feat_shape=(cfg.pt_hw_seq_len, cfg.pt_hw_seq_len),
        global_pool="token",
    )


class VisualizedBGE(nn.Module):
    """The Visualized BGE network. Inputs are token ids / pixel tensors; outputs unit vectors."""

    def __init__(self, text_config: Any, vision: VisionConfig) -> None:
        super().__init__()
        from transformers import AutoModel

        self.vision_config = vision
        self.text = AutoModel.from_config(text_config, add_pooling_layer=True)
        self.tower = build_tower(vision)
        hidden = int(text_config.hidden_size)
        self.visual_proj = nn.Linear(vision.width, hidden)
        self.hidden_size = hidden
        self.max_positions = int(text_config.max_position_embeddings)

    # -- pieces -----------------------------------------------------------------------
    def _extended_mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        ext = mask[:, None, None, :].to(dtype)
        return (1.0 - ext) * torch.finfo(dtype).min

    def _encode(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.text.encoder(
            embeddings,
            attention_mask=self._extended_mask(mask, embeddings.dtype),
            use_cache=False,
            return_dict=True,
        )
        cls = out.last_hidden_state[:, 0]
        return torch.nn.functional.normalize(cls.float(), dim=-1)

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tower output for all patch tokens (no final norm, CLS dropped), projected."""
        t: Any = self.tower
        x = t.patch_embed(pixels)
        x, rope = t._pos_embed(x)
        x = t.norm_pre(x)
        for blk in t.blocks:
            x = blk(x, rope=rope)
        return self.visual_proj(x[:, 1:])

    # -- encoders ---------------------------------------------------------------------
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        emb = self.text.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        return self._encode(emb, attention_mask)

    def encode_composed(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Image + text jointly; ``input_ids`` start with CLS (an empty text is [CLS][SEP])."""
        emb_layer = self.text.embeddings
        device = pixels.device
        img = self.patch_tokens(pixels)
        n_img = img.shape[1]
        img = img + emb_layer.position_embeddings(torch.arange(1, 1 + n_img, device=device))
        img = emb_layer.LayerNorm(img)
        text_len = input_ids.shape[1]
        positions = torch.cat(
            [
                torch.zeros(1, dtype=torch.long, device=device),
                torch.arange(1 + n_img, n_img + text_len, device=device),
            ]
        )
        txt = emb_layer(
            input_ids=input_ids,
            position_ids=positions.unsqueeze(0).expand(input_ids.shape[0], -1),
            token_type_ids=torch.zeros_like(input_ids),
        )
        seq = torch.cat([txt[:, :1], img, txt[:, 1:]], dim=1)
        mask = torch.cat(
            [
                attention_mask[:, :1],
                torch.ones(input_ids.shape[0], n_img, dtype=attention_mask.dtype, device=device),
                attention_mask[:, 1:],
            ],
            dim=1,
        )
        return self._encode(seq, mask)


# -- checkpoint loading ---------------------------------------------------------------------
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


def resolve_device(device: str) -> torch.device:
    """``auto`` = cuda > mps > cpu; an explicit device that is absent is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("MMSEARCH_DEVICE=cuda but no CUDA device is available; use auto/cpu")
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ModelLoadError("MMSEARCH_DEVICE=mps but MPS is not available; use auto/cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` = bf16 on CUDA with bf16 support, fp16 on other GPUs, fp32 on CPU."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def load_model_dir(
    model_dir: Path, *, device: str = "auto", dtype: str = "auto"
) -> tuple[VisualizedBGE, Any, ModelDirSpec]:
    """Build the model from a local directory, load its checkpoint; returns (model, tokenizer,
    spec). The model is in eval mode on the chosen device and dtype."""
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
    dt = resolve_dtype(dtype, dev)
    text_config._attn_implementation = "sdpa"
    model = VisualizedBGE(text_config, spec.vision)
    load_checkpoint(ckpt, model)
    model.eval().to(device=dev, dtype=dt)
    n_tokens = spec.vision.num_patches
    if n_tokens + 2 > model.max_positions:
        raise ModelLoadError(
            f"text model has {model.max_positions} positions, fewer than the {n_tokens} image "
            "tokens need"
        )
    logger.info("loaded %s (%s) on %s/%s", spec.model_id, spec.variant, dev, dt)
    return model, tokenizer, spec


def composed_text_budget(model: VisualizedBGE) -> int:
    """Max tokenizer length (incl. CLS/SEP) of the text in an image + text input."""
    return model.max_positions - model.vision_config.num_patches


def text_budget(model: VisualizedBGE) -> int:
    """Max tokenizer length of a text-only input (RoBERTa positions start after padding)."""
    cfg = model.text.config
    offset = (cfg.pad_token_id + 1) if cfg.model_type in ("xlm-roberta", "roberta") else 0
    return model.max_positions - offset


def count_params(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
