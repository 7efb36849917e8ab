"""Build the original Visualized BGE reference implementation (FlagEmbedding 1.2.11 sdist).

The sdist ships the Python files but not the EVA model-config JSONs nor the CLIP BPE vocab
(docs/architecture.md, "Visualized BGE"). We extract only ``FlagEmbedding/visual``, write the
model config for the tower size under test, and stub the CLIP *text* tokenizer module, which
this model never uses.
"""

from __future__ import annotations

import json
import sys
import tarfile
import types
from pathlib import Path

import torch

from tests.conftest import REPO

SDIST = REPO / ".cache" / "FlagEmbedding-1.2.11.tar.gz"


def _stub_clip_tokenizer(pkg: str) -> None:
    mod = types.ModuleType(f"{pkg}.tokenizer")

    class _Unused:
        def __init__(self, *a: object, **k: object) -> None:
            raise RuntimeError("the CLIP text tokenizer is not used by Visualized BGE")

    mod.SimpleTokenizer = _Unused  # type: ignore[attr-defined]
    mod.HFTokenizer = _Unused  # type: ignore[attr-defined]
    mod.tokenize = _Unused  # type: ignore[attr-defined]
    sys.modules[f"{pkg}.tokenizer"] = mod


def import_reference(workdir: Path, eva_name: str, vision_cfg: dict) -> type:
    """Extract the reference package into ``workdir`` and return its ``Visualized_BGE``."""
    if not SDIST.exists():
        raise FileNotFoundError(
            f"{SDIST} is missing: run `make install` (it downloads the FlagEmbedding sdist)"
        )
    root = workdir / "ref"
    with tarfile.open(SDIST) as tar:
        members = [m for m in tar.getmembers() if "/FlagEmbedding/visual/" in m.name]
        for m in members:
            m.name = m.name.split("/FlagEmbedding/", 1)[1]
            m.name = "FlagEmbedding/" + m.name
        tar.extractall(root, members=members, filter="data")
    (root / "FlagEmbedding" / "__init__.py").write_text("")
    cfg_dir = root / "FlagEmbedding" / "visual" / "eva_clip" / "model_configs"
    cfg_dir.mkdir(exist_ok=True)
    (cfg_dir / f"{eva_name}.json").write_text(
        json.dumps(
            {
                "embed_dim": 16 if vision_cfg["width"] < 256 else 512,
                "vision_cfg": vision_cfg,
                "text_cfg": {
                    "context_length": 77,
                    "vocab_size": 49408,
                    "width": 64,
                    "heads": 2,
                    "layers": 1,
                },
            }
        )
    )
    for name in [m for m in sys.modules if m.startswith("FlagEmbedding")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        _stub_clip_tokenizer("FlagEmbedding.visual.eva_clip")
        from FlagEmbedding.visual.modeling import Visualized_BGE  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(root))
    return Visualized_BGE  # type: ignore[no-any-return]


def build_reference(
    workdir: Path,
    text_dir: Path,
    vision: dict,
    *,
    seed: int = 0,
    scale: float = 5.0,
    bge_name: str = "bge-base-en-v1.5",
) -> torch.nn.Module:
    """A reference model with random weights for a BERT text folder and an EVA tower config."""
    vision_cfg = {
        "image_size": 224,
        "layers": vision["depth"],
        "width": vision["width"],
        "head_width": vision["head_width"],
        "patch_size": vision["patch_size"],
        "mlp_ratio": 2.6667,
        "eva_model_name": "eva-clip-b-16-X",
        "drop_path_rate": 0.0,
        "xattn": True,
        "fusedLN": True,
        "rope": True,
        "pt_hw_seq_len": 16,
        "intp_freq": True,
        "naiveswiglu": True,
        "subln": True,
        "patch_dropout": 0.5,
    }
    # The reference picks its tower config by the text model's name.
    eva_name = "EVA02-CLIP-L-14" if "bge-m3" in bge_name else "EVA02-CLIP-B-16"
    cls = import_reference(workdir, eva_name, vision_cfg)
    original_load = cls.load_model
    cls.load_model = lambda self, weight: None  # we randomise and save instead of loading
    try:
        torch.manual_seed(seed)
        ref = cls(model_name_bge=bge_name, model_weight="unused", from_pretrained=str(text_dir))
    finally:
        cls.load_model = original_load
    # transformers >= 4.4x runs BERT on SDPA, which rejects the reference's fp16 mask next to
    # fp32 queries; the mask's values (-65504 for padding) zero the same softmax weights in fp32.
    original_mask = ref.get_extended_attention_mask
    ref.get_extended_attention_mask = lambda mask, shape: original_mask(
        mask, shape, dtype=torch.float32
    )
    hidden = ref.bge_embeddings.word_embeddings.weight.shape[1]
    ref.visual_proj = torch.nn.Linear(vision["width"], hidden)
    ref.depth = len(ref.bge_encoder.layer)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim >= 2:
                p.mul_(scale)
            elif p.ndim == 1 and name.endswith("weight"):  # LayerNorm scales
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.02 * torch.randn_like(p))
    return ref.eval()
