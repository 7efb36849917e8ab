import asyncio
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rag.embedding.checkpoint import MODEL_JSON, ModelDirSpec
from rag.embedding.model import VisionConfig
from rag.embedding.multimodal import VisualizedBGEEmbedding
from rag.embedding.tiny import make_embed_dir
from rag.errors import InputImageError, ModelLoadError
from tests.reference_impl import build_reference


def _img(seed: int, size: tuple[int, int] = (90, 60)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8"))


def _cos(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


# -- the reference implementation, loaded into our class ------------------------------
def _reference_pair(tmp: Path, kit_text_dir: Path, vision: dict, seed: int = 0):
    ref = build_reference(tmp, kit_text_dir, vision, seed=seed)
    model_dir = tmp / "from_reference"
    model_dir.mkdir()
    shutil.copytree(kit_text_dir, model_dir / "text")
    torch.save(ref.state_dict(), model_dir / "Visualized_ref.pth")
    spec = ModelDirSpec(
        variant="tiny",
        model_id="reference-random",
        text_model_dir="text",
        checkpoint="Visualized_ref.pth",
        vision=VisionConfig(
            width=vision["width"],
            depth=vision["depth"],
            head_width=vision["head_width"],
            patch_size=vision["patch_size"],
        ),
    )
    (model_dir / MODEL_JSON).write_text(spec.to_json())
    ours = VisualizedBGEEmbedding.from_local(model_dir, device="cpu", dtype="float32")
    return ref, ours


def _assert_equivalent(ref, ours: VisualizedBGEEmbedding, tmp: Path) -> None:
    texts = ["a phone case with this", "red shoes", "front view of this leopard"]
    images = [_img(1), _img(2, (40, 120)), Image.new("RGB", (300, 200), "orange")]
    paths = []
    for i, im in enumerate(images):
        p = tmp / f"ref_{i}.png"
        im.save(p)
        paths.append(p)
    with torch.no_grad():
        tok = ref.tokenizer(texts, return_tensors="pt", padding=True)
        ref_text = ref.encode_text(tok)
        pix = torch.stack([ref.preprocess_val(Image.open(p)) for p in paths])
        ref_img = ref.encode_image(pix)
        ref_mm = torch.cat(
            [
                ref.encode_mm(pix[i : i + 1], ref.tokenizer([t], return_tensors="pt", padding=True))
                for i, t in enumerate(texts)
            ]
        )
    our_text = ours.get_text_embedding_batch(texts)
    our_img = ours.get_image_embedding_batch([str(p) for p in paths])
    our_mm = [ours.get_composed_embedding(str(p), t) for p, t in zip(paths, texts, strict=True)]
    for name, r, o in (
        ("text", ref_text, our_text),
        ("image", ref_img, our_img),
        ("composed", ref_mm, our_mm),
    ):
        for i in range(len(o)):
            assert _cos(r[i].tolist(), o[i]) > 0.9999, f"{name} {i}"
    # The three kinds are genuinely different vectors (the check is not vacuous).
    assert _cos(our_img[0], our_img[1]) < 0.999
    assert _cos(our_mm[0], our_img[0]) < 0.99999


def _assert_kit_format_matches(kit_dir: Path, ref) -> None:
    """The kit writes what the reference saves: same keys, same shapes, fp16 like the real file."""
    kit = torch.load(next(kit_dir.glob("*.pth")), weights_only=True)
    ref_sd = ref.state_dict()
    assert set(kit) == set(ref_sd)
    assert all(tuple(kit[k].shape) == tuple(ref_sd[k].shape) for k in kit)
    assert {v.dtype for v in kit.values()} == {torch.float16}


def test_reference_equivalence_tiny(tmp_path: Path, tiny_embed_dir: Path) -> None:
    vision = {"width": 32, "depth": 2, "head_width": 16, "patch_size": 16}
    text_dir = (
        tiny_embed_dir / json.loads((tiny_embed_dir / MODEL_JSON).read_text())["text_model_dir"]
    )
    ref, ours = _reference_pair(tmp_path, text_dir, vision)
    _assert_equivalent(ref, ours, tmp_path)
    _assert_kit_format_matches(tiny_embed_dir, ref)
    # The pitfall the reference has: train mode (never left in the reference) changes outputs.
    ref.train()
    with torch.no_grad():
        pix = ref.preprocess_val(_img(3)).unsqueeze(0)
        train_out = ref.encode_image(pix)[0].tolist()
    assert _cos(train_out, ours.get_image_embedding(_img(3))) < 0.9999


@pytest.mark.slow
def test_reference_equivalence_full_base_size(tmp_path: Path) -> None:
    full = make_embed_dir(tmp_path / "full", full_size=True)
    vision = {"width": 768, "depth": 12, "head_width": 64, "patch_size": 16}
    ref, ours = _reference_pair(tmp_path, full / "bge-base-random", vision)
    _assert_equivalent(ref, ours, tmp_path)
    _assert_kit_format_matches(full, ref)
    assert len(ref.state_dict()) == 488  # tensors in the official base file (see docs/)


# -- behaviour of our class on the tiny kit ------------------------------------------
def test_dims_norms_and_batch_equals_single(tiny_embedding: VisualizedBGEEmbedding) -> None:
    e = tiny_embedding
    assert e.dim == 32 and e.model_name.startswith("visualized-bge-tiny")
    imgs = [_img(i) for i in range(5)]
    batch = e.get_image_embedding_batch(imgs)
    for i, im in enumerate(imgs):
        single = e.get_image_embedding(im)
        assert _cos(batch[i], single) > 0.99999
        assert np.linalg.norm(single) == pytest.approx(1.0, abs=1e-5) and len(single) == 32
    texts = ["red", "a phone case with this", "blue shoes"]
    tb = e.get_text_embedding_batch(texts)
    for t, v in zip(texts, tb, strict=True):
        assert _cos(v, e.get_text_embedding(t)) > 0.99999
    cb = e.get_composed_embedding_batch(imgs[:3], texts)
    for i in range(3):
        assert _cos(cb[i], e.get_composed_embedding(imgs[i], texts[i])) > 0.99999
    assert all(isinstance(x, float) for x in cb[0])


def test_image_input_kinds_agree(tiny_embedding: VisualizedBGEEmbedding, tmp_path: Path) -> None:
    im = _img(7)
    p = tmp_path / "x.png"
    im.save(p)
    data = p.read_bytes()
    ref = tiny_embedding.get_image_embedding(im)
    for src in (str(p), p, data, io.BytesIO(data)):
        assert _cos(tiny_embedding.get_image_embedding(src), ref) > 0.99999


def test_exif_orientation_applied(tiny_embedding: VisualizedBGEEmbedding, tmp_path: Path) -> None:
    upright = _img(8, (60, 100))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 270 CW to view" undoes ROTATE_90
    p = tmp_path / "rot.jpg"
    stored.save(p, exif=exif, quality=100)
    upright_p = tmp_path / "up.jpg"
    upright.save(upright_p, quality=100)
    assert (
        _cos(
            tiny_embedding.get_image_embedding(str(p)),
            tiny_embedding.get_image_embedding(str(upright_p)),
        )
        > 0.999
    )


def test_modes_converted(tiny_embedding: VisualizedBGEEmbedding) -> None:
    for mode in ("L", "RGBA", "CMYK", "P", "I;16", "1", "LA"):
        v = tiny_embedding.get_image_embedding(
            _img(9).convert(mode) if mode != "I;16" else Image.new("I;16", (40, 40), 3000)
        )
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)


def test_long_instruction_truncated_not_crashing(
    tiny_embedding: VisualizedBGEEmbedding, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        v = tiny_embedding.get_composed_embedding(_img(1), "leopard " * 2000)
    assert len(v) == 32 and "truncated" in caplog.text
    assert len(tiny_embedding.get_text_embedding("word " * 2000)) == 32


def test_async_variants(tiny_embedding: VisualizedBGEEmbedding) -> None:
    async def go():
        return (
            await tiny_embedding.aget_composed_embedding(_img(1), "red"),
            await tiny_embedding.aget_image_embedding_batch([_img(1)]),
            await tiny_embedding.aget_query_embedding("red"),
        )

    c, i, t = asyncio.run(go())
    assert _cos(c, tiny_embedding.get_composed_embedding(_img(1), "red")) > 0.99999
    assert _cos(i[0], tiny_embedding.get_image_embedding(_img(1))) > 0.99999
    assert _cos(t, tiny_embedding.get_text_embedding("red")) > 0.99999


def test_bad_image_input(tiny_embedding: VisualizedBGEEmbedding, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(InputImageError, match="bad.jpg: not an image"):
        tiny_embedding.get_image_embedding(str(bad))
    with pytest.raises(InputImageError, match="no such file"):
        tiny_embedding.get_image_embedding(str(tmp_path / "missing.png"))


# -- loading errors ----------------------------------------------------------------------
def _copy_kit(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _ckpt(d: Path) -> Path:
    return next(d.glob("*.pth"))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist.*models pull"):
        VisualizedBGEEmbedding.from_local(tmp_path / "nope")


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not an mmsearch model directory"):
        VisualizedBGEEmbedding.from_local(tmp_path)


def test_corrupt_checkpoint(tiny_embed_dir: Path, tmp_path: Path) -> None:
    d = _copy_kit(tiny_embed_dir, tmp_path / "m")
    _ckpt(d).write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelLoadError) as e:
        VisualizedBGEEmbedding.from_local(d)
    assert _ckpt(d).name in str(e.value) and "corrupt or truncated" in str(e.value)
    assert "\n" not in str(e.value)


def test_truncated_checkpoint(tiny_embed_dir: Path, tmp_path: Path) -> None:
    d = _copy_kit(tiny_embed_dir, tmp_path / "m")
    data = _ckpt(d).read_bytes()
    _ckpt(d).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated.*models pull"):
        VisualizedBGEEmbedding.from_local(d)


def test_wrong_variant_checkpoint(tiny_embed_dir: Path, tmp_path: Path) -> None:
    d = _copy_kit(tiny_embed_dir, tmp_path / "m")
    spec = json.loads((d / MODEL_JSON).read_text())
    spec["vision"]["width"] = 64  # the directory claims another tower than the .pth holds
    (d / MODEL_JSON).write_text(json.dumps(spec))
    with pytest.raises(
        ModelLoadError, match=r"does not fit this model: '\S+' has shape .* \(wrong variant\?\)"
    ):
        VisualizedBGEEmbedding.from_local(d)


def test_checkpoint_missing_tensor(tiny_embed_dir: Path, tmp_path: Path) -> None:
    d = _copy_kit(tiny_embed_dir, tmp_path / "m")
    state = torch.load(_ckpt(d), weights_only=True)
    del state["visual_proj.weight"]
    torch.save(state, _ckpt(d))
    with pytest.raises(ModelLoadError, match="incomplete: missing 'visual_proj.weight'"):
        VisualizedBGEEmbedding.from_local(d)


def test_checkpoint_unexpected_key(tiny_embed_dir: Path, tmp_path: Path) -> None:
    d = _copy_kit(tiny_embed_dir, tmp_path / "m")
    state = torch.load(_ckpt(d), weights_only=True)
    state["something.else"] = torch.zeros(2)
    torch.save(state, _ckpt(d))
    with pytest.raises(ModelLoadError, match="unexpected checkpoint key 'something.else'"):
        VisualizedBGEEmbedding.from_local(d)


def test_pickled_code_is_refused(tiny_embed_dir: Path, tmp_path: Path) -> None:
    d = _copy_kit(tiny_embed_dir, tmp_path / "m")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, _ckpt(d))
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        VisualizedBGEEmbedding.from_local(d)


def test_two_checkpoints_refused(tiny_embed_dir: Path, tmp_path: Path) -> None:
    d = _copy_kit(tiny_embed_dir, tmp_path / "m")
    shutil.copy(_ckpt(d), d / "extra.pth")
    with pytest.raises(ModelLoadError, match="exactly one checkpoint"):
        VisualizedBGEEmbedding.from_local(d)


def test_kit_script_writes_both_models(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    res = subprocess.run(
        [sys.executable, "scripts/make_tiny_models.py", str(tmp_path / "kit")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "kit" / "embed" / MODEL_JSON).is_file()
    assert (tmp_path / "kit" / "vlm" / "config.json").is_file()
    VisualizedBGEEmbedding.from_local(tmp_path / "kit" / "embed")


def _tiny_xlmr_dir(out: Path) -> Path:
    """A tiny bge-m3-style text folder: XLM-RoBERTa config + a sentencepiece model."""
    import sentencepiece as spm
    from transformers import XLMRobertaConfig, XLMRobertaTokenizer

    out.mkdir(parents=True)
    corpus = ["a phone case with this red shoes leopard print front view of this bag"] * 50
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_prefix=str(out / "sentencepiece.bpe"),
        vocab_size=25,
        model_type="unigram",
        pad_id=-1,
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        minloglevel=2,
    )
    tok = XLMRobertaTokenizer(vocab_file=str(out / "sentencepiece.bpe.model"))
    tok.save_pretrained(out)
    XLMRobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=1024,
        pad_token_id=1,
        type_vocab_size=1,
    ).save_pretrained(out)
    return out


def test_reference_equivalence_m3_layout(tmp_path: Path) -> None:
    """bge-m3's text side is XLM-RoBERTa: default position ids start after the padding index
    in the text-only path, explicit ones (image tokens 1..N, text after) in the composed path,
    and the tower is the L/14 layout (256 patches). Same token ids into both implementations."""
    from transformers import AutoConfig

    from rag.embedding.checkpoint import load_checkpoint
    from rag.embedding.model import VisualizedBGE

    text_dir = _tiny_xlmr_dir(tmp_path / "bge-m3-tiny")
    vision = {"width": 32, "depth": 2, "head_width": 16, "patch_size": 14}
    ref = build_reference(tmp_path, text_dir, vision, bge_name="bge-m3")
    ckpt = tmp_path / "m3.pth"
    torch.save(ref.state_dict(), ckpt)
    ours = VisualizedBGE(
        AutoConfig.from_pretrained(text_dir),
        VisionConfig(width=32, depth=2, head_width=16, patch_size=14),
    )
    load_checkpoint(ckpt, ours)
    ours.eval()
    texts = ["a phone case with this", "red shoes"]
    imgs = [_img(1), _img(2, (40, 120))]
    with torch.no_grad():
        pix = torch.stack([ref.preprocess_val(im) for im in imgs])
        assert pix.shape[-1] == 224
        tok = ref.tokenizer(texts, return_tensors="pt", padding=True)
        pairs = [
            (ref.encode_text(tok), ours.encode_text(tok["input_ids"], tok["attention_mask"])),
            (
                ref.encode_image(pix),
                ours.encode_composed(
                    pix, *ref.tokenizer(["", ""], return_tensors="pt", padding=True).values()
                ),
            ),
        ]
        for i, t in enumerate(texts):
            one = ref.tokenizer([t], return_tensors="pt", padding=True)
            pairs.append(
                (
                    ref.encode_mm(pix[i : i + 1], one),
                    ours.encode_composed(pix[i : i + 1], one["input_ids"], one["attention_mask"]),
                )
            )
    for r, o in pairs:
        for a, b in zip(r, o, strict=True):
            assert _cos(a.tolist(), b.tolist()) > 0.9999
    assert ours.patch_tokens(pix).shape[1] == 256  # L/14 layout: 16x16 patches
