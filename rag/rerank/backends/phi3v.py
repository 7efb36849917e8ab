"""Backend ``phi3v``: Phi-3 / Phi-3.5 Vision through its Hub remote code (explicit opt-in, pinned
revision), with the transformers-compatibility additions described in docs/architecture.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from rag.errors import ConfigError
from rag.rerank.backends.base import ImageDetail
from rag.rerank.backends.hf import TransformersVLM, load_pretrained, require_pinned


def patch_dynamic_cache() -> list[str]:
    """Give transformers' DynamicCache the three members Phi-3 Vision's remote code still calls
    (removed in 4.49-4.54); values verified against 4.48 (docs/architecture.md, "The VLM
    reranker"). Returns what was added. ``get_max_length`` must be None:
    ``get_max_cache_shape()`` returns -1 from 4.54 on."""
    from transformers import DynamicCache

    added = []
    if not hasattr(DynamicCache, "get_max_length"):
        DynamicCache.get_max_length = lambda self: None  # type: ignore[attr-defined]
        added.append("get_max_length")
    if not hasattr(DynamicCache, "seen_tokens"):
        DynamicCache.seen_tokens = property(lambda self: self.get_seq_length())  # type: ignore[attr-defined]
        added.append("seen_tokens")
    if not hasattr(DynamicCache, "get_usable_length"):

        def get_usable_length(self: Any, new_seq_length: int = 0, layer_idx: int = 0) -> int:
            return int(self.get_seq_length(layer_idx))

        DynamicCache.get_usable_length = get_usable_length  # type: ignore[attr-defined]
        added.append("get_usable_length")
    return added


PHI3V_END_IDS = [32007, 32000]  # <|end|>, <|endoftext|>


class Phi3VisionVLM(TransformersVLM):
    """Phi-3 / Phi-3.5 Vision (backend ``phi3v``): remote code on explicit opt-in, pinned.

    Args:
        model, processor, end_token_ids: as for ``TransformersVLM``.
        caption_num_crops: most 336-px HD crops for a ``detail="low"`` call (the caption).
        rerank_num_crops: most crops for a ``detail="high"`` call (the candidate grid).
    """

    name = "phi3v"

    def __init__(
        self,
        *,
        model: Any,
        processor: Any,
        end_token_ids: list[int] | None = None,
        caption_num_crops: int = 4,
        rerank_num_crops: int = 16,
    ) -> None:
        super().__init__(model=model, processor=processor, end_token_ids=end_token_ids)
        self.num_crops: dict[ImageDetail, int] = {
            "low": caption_num_crops,
            "high": rerank_num_crops,
        }

    # Runs under the per-instance call lock (generate / candidate_scores): the crop count is
    # state of the shared image processor, which its preprocess reads (HD_transform(im,
    # hd_num=self.num_crops)), so it is set for every call, right before that call's preprocess.
    def _inputs(self, prompt: str, image: Image.Image | None, detail: ImageDetail) -> Any:
        tag = "<|image_1|>\n" if image is not None else ""
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": tag + prompt}],
            tokenize=False,
            add_generation_prompt=True,
        )
        images = [image] if image is not None else None
        if images is not None:
            self.processor.image_processor.num_crops = self.num_crops[detail]
        return self.processor(text, images, return_tensors="pt").to(self.model.device)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        model_id: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        revision: str | None = None,
        trust_remote_code: bool = False,
        caption_num_crops: int = 4,
        rerank_num_crops: int = 16,
    ) -> Phi3VisionVLM:
        import importlib.util

        if not trust_remote_code:
            raise ConfigError(
                f"{model_id} runs its own Python code from the Hub: opt in with "
                "MMSEARCH_VLM_TRUST_REMOTE_CODE=true (at a pinned MMSEARCH_VLM_REVISION), or use "
                "the openai backend (vLLM) / --no-rerank"
            )
        require_pinned(str(model_id), revision, trust_remote_code)
        patch_dynamic_cache()
        attn = {} if importlib.util.find_spec("flash_attn") else {"_attn_implementation": "eager"}
        model, processor = load_pretrained(
            model_id,
            "AutoModelForCausalLM",
            device=device,
            dtype=dtype,
            revision=revision,
            trust_remote_code=True,
            processor_kwargs={"num_crops": rerank_num_crops},
            model_kwargs=attn,
        )
        return cls(
            model=model,
            processor=processor,
            end_token_ids=PHI3V_END_IDS,
            caption_num_crops=caption_num_crops,
            rerank_num_crops=rerank_num_crops,
        )
