"""Backend ``hf``: any transformers image-text-to-text model with a chat template (Qwen2-VL,
Idefics, ...). Decoding can be constrained to a permutation of the candidate numbers, and
candidates can be scored from one prefill (first-token mode)."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from rag.errors import ConfigError, ModelLoadError, VLMError
from rag.rerank.backends.base import ImageDetail, VLMBackend, VLMReply, is_pinned
from rag.rerank.backends.constrained import PermutationLogitsProcessor, single_token_ids

logger = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


def _one_call_at_a_time(method: _F) -> _F:
    """Serialise a model call per backend instance: callers on several threads (the HTTP
    server) must not run two forward passes through one model at once (twice the memory on a
    GPU, and the model code mutates its inputs)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._call_lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def require_pinned(model_id: str, revision: str | None, trust_remote_code: bool) -> None:
    if trust_remote_code and not is_pinned(revision):
        raise ConfigError(
            f"running {model_id}'s own code needs a pinned revision: set MMSEARCH_VLM_REVISION "
            "to a commit hash"
        )


def load_pretrained(
    model_id: str | Path,
    auto_class: str,
    *,
    device: str,
    dtype: str,
    revision: str | None,
    trust_remote_code: bool,
    processor_kwargs: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """(model on the chosen device/dtype, processor); load failures become ModelLoadError."""
    import transformers

    from rag.core.device import resolve_device, resolve_dtype

    dev = resolve_device(device)
    try:
        processor = transformers.AutoProcessor.from_pretrained(
            model_id,
            revision=revision,
            trust_remote_code=trust_remote_code,
            **(processor_kwargs or {}),
        )
        model = getattr(transformers, auto_class).from_pretrained(
            model_id,
            revision=revision,
            trust_remote_code=trust_remote_code,
            torch_dtype=resolve_dtype(dtype, dev),
            **(model_kwargs or {}),
        )
    except (OSError, ValueError) as e:
        where = f"{model_id}@{revision}" if revision else str(model_id)
        raise ModelLoadError(f"cannot load the VLM {where}: {str(e).splitlines()[0][:200]}") from e
    return model.to(dev), processor


class TransformersVLM(VLMBackend):
    """A transformers image-text-to-text model with a chat template (backend ``hf``).

    Args:
        model: the loaded model (eval mode).
        processor: its processor (tokenizer + image processor + chat template).
        end_token_ids: ids that end generation (default: the generation config's eos).
    """

    name = "hf"
    supports_constrained = True
    supports_first_token = True

    def __init__(self, *, model: Any, processor: Any, end_token_ids: list[int] | None = None):
        self.model = model.eval()
        self.processor = processor
        self._call_lock = threading.Lock()
        self.tokenizer = getattr(processor, "tokenizer", processor)
        eos = end_token_ids or model.generation_config.eos_token_id
        self.end_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if not self.end_ids:
            raise ModelLoadError("the VLM has no end-of-sequence token id")

    @classmethod
    def from_pretrained(
        cls,
        model_id: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> TransformersVLM:
        require_pinned(str(model_id), revision, trust_remote_code)
        model, processor = load_pretrained(
            model_id,
            "AutoModelForImageTextToText",
            device=device,
            dtype=dtype,
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
        return cls(model=model, processor=processor)

    # The model code may modify input tensors in place (Phi-3 Vision clamps input_ids), so
    # every call builds fresh processor outputs. ``detail`` is ignored here: these processors
    # size images by their own pixel limits (Phi3VisionVLM maps it to crops).
    def _inputs(self, prompt: str, image: Image.Image | None, detail: ImageDetail) -> Any:
        content: list[dict[str, str]] = [{"type": "image"}] if image is not None else []
        content.append({"type": "text", "text": prompt})
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if image is not None:
            kwargs["images"] = [image]
        return self.processor(**kwargs).to(self.model.device)

    def _permutation_processor(self, prompt_len: int, k: int) -> Any:
        cand = single_token_ids(self.tokenizer, [str(i) for i in range(1, k + 1)])
        sep = single_token_ids(self.tokenizer, [","])
        if cand is None or sep is None:
            return None
        return PermutationLogitsProcessor(prompt_len, cand, sep[0], self.end_ids)

    @_one_call_at_a_time
    def generate(
        self,
        prompt: str,
        image: Image.Image | None,
        *,
        max_new_tokens: int = 128,
        permutation_of: int | None = None,
        detail: ImageDetail = "high",
    ) -> VLMReply:
        import torch
        from transformers import LogitsProcessorList

        inputs = self._inputs(prompt, image, detail)
        prompt_len = int(inputs["input_ids"].shape[1])
        processors = LogitsProcessorList()
        if permutation_of:
            proc = self._permutation_processor(prompt_len, permutation_of)
            if proc is None:
                raise VLMError(
                    f"cannot constrain {permutation_of} candidates: numbers are "
                    "not single tokens for this tokenizer"
                )
            processors.append(proc)
            max_new_tokens = 2 * permutation_of + 1
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=self.end_ids,
                pad_token_id=pad if pad is not None else self.end_ids[0],
                logits_processor=processors,
            )
        new = out[0, prompt_len:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return VLMReply(text=text.strip(), prompt_tokens=prompt_len, new_tokens=int(new.shape[0]))

    @_one_call_at_a_time
    def candidate_scores(
        self, prompt: str, image: Image.Image | None, k: int, *, detail: ImageDetail = "high"
    ) -> list[float]:
        import torch

        cand = single_token_ids(self.tokenizer, [str(i) for i in range(1, k + 1)])
        if cand is None:
            raise VLMError(f"cannot score {k} candidates: numbers are not single tokens")
        inputs = self._inputs(prompt, image, detail)
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0, -1]
        return [float(logits[i]) for i in cand]
