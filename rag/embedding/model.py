"""Visualized BGE (VISTA, arXiv 2406.04292) as a torch module.

The text side is a `transformers` BERT (bge-base-en-v1.5) or XLM-RoBERTa (bge-m3); the vision
tower is timm's EVA02 (the EVA-CLIP tower). Layout of a composed (image + text) input, as in the
reference implementation:

    [CLS] + visual_proj(patch tokens) (+ BERT positions 1..N, + embedding LayerNorm)
          + text tokens without CLS (positions continue at N+1)

Image-only is the same path with an empty text; text-only is the plain text model. Pooling is
CLS, then L2 normalisation. See docs/architecture.md, "Visualized BGE".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


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


def composed_text_budget(model: VisualizedBGE) -> int:
    """Max tokenizer length (incl. CLS/SEP) of the text in an image + text input."""
    return model.max_positions - model.vision_config.num_patches


def text_budget(model: VisualizedBGE) -> int:
    """Max tokenizer length of a text-only input (RoBERTa positions start after padding)."""
    cfg = model.text.config
    offset = (cfg.pad_token_id + 1) if cfg.model_type in ("xlm-roberta", "roberta") else 0
    return model.max_positions - offset
