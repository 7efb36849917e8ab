"""Random-weight models in the exact on-disk format of the real ones, built offline.

Used by the tests, the benchmarks and `mmsearch demo --synthetic`; the command-line entry is
``python scripts/make_tiny_models.py OUTDIR [--full-size] [--seed N]``.

``OUTDIR/embed`` is a local Visualized BGE model directory (``mmsearch_model.json``, a BERT
text-model folder with ``config.json`` + ``vocab.txt``, and one official-format ``.pth``: the
reference implementation's key names, fp16 tensors, EVA-CLIP tower layout, rotary buffers).
Tiny by default (fast tests); ``--full-size`` gives the real base dimensions (benchmarks).
Weights are random: embeddings are meaningful only relative to each other.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rag.embedding.checkpoint import TEXT_PREFIXES, ModelDirSpec
from rag.embedding.model import VisionConfig, VisualizedBGE

_WORDS = (
    "a an the this that with without like but in on of for and or to from is are "
    "phone case cover shoe shoes bag bags red blue green black white yellow leopard cat dog "
    "animal print pattern cheaper bigger smaller front view side back same style color "
    "product image photo picture show me find similar one more less"
).split()


def _vocab(size: int | None) -> list[str]:
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    punct = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *punct, *chars]
    vocab += ["##" + c for c in chars] + [w for w in dict.fromkeys(_WORDS) if w not in vocab]
    if size is not None:
        vocab += [f"[unused{i}]" for i in range(size - len(vocab))]
    return vocab


def _rope_buffers(cfg: VisionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """EVA-CLIP's VisionRotaryEmbeddingFast tables (persistent buffers in the checkpoint)."""
    dim = cfg.head_width // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    ft = cfg.image_size // cfg.patch_size
    t = torch.arange(ft) / ft * cfg.pt_hw_seq_len
    f = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, dim=-1)
    grid = torch.cat([f[:, None, :].expand(ft, ft, -1), f[None, :, :].expand(ft, ft, -1)], dim=-1)
    flat = grid.reshape(-1, grid.shape[-1])
    return flat.cos(), flat.sin()


def _tower_key_to_reference(key: str) -> str:
    for ours, ref in (
        ("mlp.norm.", "mlp.ffn_ln."),
        ("attn.norm.", "attn.inner_attn_ln."),
        ("mlp.fc1_g.", "mlp.w1."),
        ("mlp.fc1_x.", "mlp.w2."),
        ("mlp.fc2.", "mlp.w3."),
        ("attn.q_proj.bias", "attn.q_bias"),
        ("attn.v_proj.bias", "attn.v_bias"),
    ):
        key = key.replace(ours, ref)
    return key


def reference_state_dict(model: VisualizedBGE, clip_dim: int) -> dict[str, torch.Tensor]:
    """Our module's weights under the reference implementation's names and layout."""
    out: dict[str, torch.Tensor] = {}
    cfg = model.vision_config
    for key, value in model.state_dict().items():
        ours = next((p for p in TEXT_PREFIXES.items() if key.startswith(p[1])), None)
        if ours is not None:
            ref_prefix, our_prefix = ours
            out[ref_prefix + key.removeprefix(our_prefix)] = value
        elif key.startswith("visual_proj."):
            out[key] = value
        elif key.startswith("tower."):
            out["model_visual.visual." + _tower_key_to_reference(key.removeprefix("tower."))] = (
                value
            )
    cos, sin = _rope_buffers(cfg)
    out["model_visual.visual.rope.freqs_cos"] = cos
    out["model_visual.visual.rope.freqs_sin"] = sin
    for i in range(cfg.depth):
        out[f"model_visual.visual.blocks.{i}.attn.rope.freqs_cos"] = cos
        out[f"model_visual.visual.blocks.{i}.attn.rope.freqs_sin"] = sin
    gen = torch.Generator().manual_seed(1)
    out["model_visual.visual.head.weight"] = torch.randn(clip_dim, cfg.width, generator=gen) * 0.02
    out["model_visual.visual.head.bias"] = torch.zeros(clip_dim)
    out["model_visual.logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return out


def make_embed_dir(out: Path, *, full_size: bool = False, seed: int = 0) -> Path:
    """Write ``out`` as a local model directory with random weights; returns ``out``."""
    from transformers import BertConfig, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    text_dir = out / ("bge-base-random" if full_size else "bge-tiny-random")
    text_dir.mkdir(exist_ok=True)
    vocab = _vocab(30522 if full_size else None)
    (text_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(text_dir / "vocab.txt"), do_lower_case=True).save_pretrained(
        text_dir
    )
    if full_size:
        config = BertConfig(vocab_size=len(vocab))  # bge-base-en-v1.5 dimensions
        vision = VisionConfig()
        clip_dim, variant = 512, "base"
    else:
        config = BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
        )
        vision = VisionConfig(width=32, depth=2, head_width=16, patch_size=16)
        clip_dim, variant = 16, "tiny"
    config.save_pretrained(text_dir)
    torch.manual_seed(seed)
    model = VisualizedBGE(config, vision)
    # Random weights, scaled so that a tiny model still tells images apart: at the default
    # init (std 0.02) a 2-layer model maps every image to almost the same vector (cos > 0.9999).
    # LayerNorms and biases get noise too instead of 1/0.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and not full_size:
                p.mul_(5.0)
            elif p.ndim == 1 and "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.02 * torch.randn_like(p))
    state = {k: v.to(torch.float16) for k, v in reference_state_dict(model, clip_dim).items()}
    ckpt_name = "Visualized_base_en_v1.5.pth" if full_size else "Visualized_tiny_random.pth"
    for old in out.glob("*.pth"):
        old.unlink()
    torch.save(state, out / ckpt_name)
    spec = ModelDirSpec(
        variant=variant,
        model_id=f"visualized-bge-{variant}-random-seed{seed}",
        text_model_dir=text_dir.name,
        checkpoint=ckpt_name,
        vision=vision,
    )
    (out / "mmsearch_model.json").write_text(spec.to_json())
    return out
