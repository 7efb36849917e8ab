"""`VisualizedBGEEmbedding`: the LlamaIndex multimodal embedding over our Visualized BGE.

Text, image and composed (image + instruction) inputs land in one space; every output is an
L2-normalised float32 list, so Milvus' inner product is cosine similarity.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import Embedding
from llama_index.core.embeddings import MultiModalEmbedding
from pydantic import Field, PrivateAttr

from rag.core.images import ImageInput, load_image
from rag.embedding.preprocess import normalize, preprocess_uint8
from rag.errors import ConfigError

logger = logging.getLogger(__name__)


class VisualizedBGEEmbedding(MultiModalEmbedding):
    """Visualized BGE (base: 768-d, m3: 1024-d) as a LlamaIndex ``MultiModalEmbedding``.

    Build it with :meth:`from_local` from a local model directory, or pass a ready
    ``model``/``tokenizer`` (tests inject tiny models this way).

    Args:
        model_name: the model id recorded with the Milvus collection.
        embed_batch_size: items per forward pass.
        dtype_reason: why the model runs in its dtype (``mmsearch stats`` shows it).
    """

    model_name: str = Field(description="Model id (recorded with the collection).")
    device: str = Field(default="cpu", description="Torch device of the model.")
    dtype: str = Field(default="float32", description="Torch dtype of the model.")
    dtype_reason: str = Field(default="set by the caller", description="Why that dtype.")

    _model: Any = PrivateAttr()
    _tokenizer: Any = PrivateAttr()
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, *, model: Any, tokenizer: Any, model_name: str, **kwargs: Any) -> None:
        param = next(model.parameters())
        kwargs.setdefault("dtype", str(param.dtype).removeprefix("torch."))
        super().__init__(model_name=model_name, device=str(param.device), **kwargs)
        self._model = model.eval()
        self._tokenizer = tokenizer

    @classmethod
    def class_name(cls) -> str:
        return "VisualizedBGEEmbedding"

    @classmethod
    def from_local(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        embed_batch_size: int | None = None,
        compile: bool = False,
    ) -> VisualizedBGEEmbedding:
        """Load from a local model directory (see ``mmsearch models pull`` / README).

        ``embed_batch_size`` None: :func:`default_batch_size` of the device. ``compile``:
        ``torch.compile`` each transformer layer (first batches slower while it compiles)."""
        from rag.embedding.checkpoint import load_model_dir

        if embed_batch_size is not None and embed_batch_size < 1:
            raise ConfigError(f"embed_batch_size must be > 0, got {embed_batch_size}")
        model, tokenizer, spec, choice = load_model_dir(Path(path), device=device, dtype=dtype)
        if compile:
            compile_layers(model)
        param = next(model.parameters())
        return cls(
            model=model,
            tokenizer=tokenizer,
            model_name=spec.model_id,
            embed_batch_size=embed_batch_size or default_batch_size(param.device.type),
            dtype_reason=choice.reason,
        )

    # -- facts ------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self._model.hidden_size)

    @property
    def model(self) -> Any:
        return self._model

    # -- core batched encoders ----------------------------------------------------------
    def _tokenize(self, texts: list[str], max_length: int) -> Any:
        # One tokenisation in the usual case; only a batch with an over-long text is
        # tokenised again, truncated.
        enc = self._tokenizer(texts, padding=True, truncation=False, return_tensors="pt")
        if enc["input_ids"].shape[1] > max_length:
            lengths = enc["attention_mask"].sum(dim=1)
            logger.warning(
                "%d text(s) longer than the %d-token budget were truncated",
                int((lengths > max_length).sum()),
                max_length,
            )
            enc = self._tokenizer(
                texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
        return enc.to(self._model_device())

    def _model_device(self) -> Any:
        return next(self._model.parameters()).device

    def _pixels(self, images: Sequence[ImageInput]) -> Any:
        import torch

        size = self._model.vision_config.image_size
        return torch.stack([preprocess_uint8(load_image(img), size) for img in images])

    def _to_model(self, pixels: Any) -> Any:
        """A pixel batch (uint8, or float already normalised) -> the model's input: copied to
        its device (from pinned memory, asynchronously, on CUDA), normalised there."""
        param = next(self._model.parameters())
        if param.device.type == "cuda":
            pixels = pixels.pin_memory().to(param.device, non_blocking=True)
        else:
            pixels = pixels.to(param.device)
        return normalize(pixels, param.dtype)

    def _run(self, fn: Any, *args: Any) -> list[list[float]]:
        import torch

        with self._lock, torch.inference_mode():
            out = fn(*args)
        return out.float().cpu().tolist()  # type: ignore[no-any-return]

    def _text_batch(self, texts: list[str]) -> list[list[float]]:
        from rag.embedding.model import text_budget

        out: list[list[float]] = []
        for i in range(0, len(texts), self.embed_batch_size):
            enc = self._tokenize(texts[i : i + self.embed_batch_size], text_budget(self._model))
            out += self._run(self._model.encode_text, enc["input_ids"], enc["attention_mask"])
        return out

    def _composed_batch(
        self, images: Sequence[ImageInput], texts: Sequence[str]
    ) -> list[list[float]]:
        from rag.embedding.model import composed_text_budget

        if len(images) != len(texts):
            raise ConfigError(f"got {len(images)} images but {len(texts)} texts")
        out: list[list[float]] = []
        budget = composed_text_budget(self._model)
        for i in range(0, len(images), self.embed_batch_size):
            pixels = self._to_model(self._pixels(images[i : i + self.embed_batch_size]))
            enc = self._tokenize(list(texts[i : i + self.embed_batch_size]), budget)
            out += self._run(
                self._model.encode_composed, pixels, enc["input_ids"], enc["attention_mask"]
            )
        return out

    def embed_pixels(self, pixels: Any, texts: Sequence[str] | None = None) -> list[list[float]]:
        """Embed a batch of preprocessed pixels: uint8 from :func:`preprocess_uint8` (the
        ingestion pipeline decodes in parallel and hands batches here) or float already
        normalised."""
        from rag.embedding.model import composed_text_budget

        texts = list(texts) if texts is not None else [""] * pixels.shape[0]
        enc = self._tokenize(texts, composed_text_budget(self._model))
        return self._run(
            self._model.encode_composed,
            self._to_model(pixels),
            enc["input_ids"],
            enc["attention_mask"],
        )

    # -- LlamaIndex interface -------------------------------------------------------------
    def _get_query_embedding(self, query: str) -> Embedding:
        return self._text_batch([query])[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._text_batch([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._text_batch(list(texts))

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    def _get_image_embedding(self, img_file_path: Any) -> Embedding:
        return self._composed_batch([img_file_path], [""])[0]

    def _get_image_embeddings(self, img_file_paths: list[Any]) -> list[Embedding]:
        # The base class loops one by one; one forward pass per batch is the point here.
        return self._composed_batch(list(img_file_paths), [""] * len(img_file_paths))

    async def _aget_image_embedding(self, img_file_path: Any) -> Embedding:
        return await asyncio.to_thread(self._get_image_embedding, img_file_path)

    async def _aget_image_embeddings(self, img_file_paths: list[Any]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_image_embeddings, img_file_paths)

    # -- composed (image + instruction) --------------------------------------------------
    def get_composed_embedding(self, image: ImageInput, text: str) -> Embedding:
        """Embed an image and an instruction jointly ("a phone case with this" + photo)."""
        return self._composed_batch([image], [text])[0]

    def get_composed_embedding_batch(
        self, images: Sequence[ImageInput], texts: Sequence[str]
    ) -> list[Embedding]:
        """Batched :meth:`get_composed_embedding`; ``images[i]`` goes with ``texts[i]``."""
        return self._composed_batch(images, texts)

    async def aget_composed_embedding(self, image: ImageInput, text: str) -> Embedding:
        return await asyncio.to_thread(self.get_composed_embedding, image, text)

    async def aget_composed_embedding_batch(
        self, images: Sequence[ImageInput], texts: Sequence[str]
    ) -> list[Embedding]:
        return await asyncio.to_thread(self.get_composed_embedding_batch, images, texts)


def default_batch_size(device_type: str) -> int:
    """Images per forward pass when not set: 64 on CUDA (keeps a GPU busy; not yet measured
    on one: `make bench-gpu` covers batch 1-256), 16 elsewhere (on a CPU larger batches gain
    little: benchmarks/README.md)."""
    return 64 if device_type == "cuda" else 16


def compile_layers(model: Any) -> None:
    """``torch.compile`` every transformer layer of the tower and the text encoder in place
    (per layer: the composed input's sequence length varies with the text)."""
    for block in model.tower.blocks:
        block.compile(dynamic=True)
    for layer in model.text.encoder.layer:
        layer.compile(dynamic=True)
