"""Vision-language model backends for the reranker, behind one small interface.

* ``hf``: any transformers image-text-to-text model with a chat template (Qwen2-VL, Idefics...);
* ``phi3v``: Phi-3 / Phi-3.5 Vision via its Hub remote code (opt-in, pinned revision), with the
  transformers-compatibility fixes of DESIGN.md §6;
* ``openai``: an OpenAI-compatible chat endpoint with image parts (vLLM serving Phi-3.5-vision).

The transformers backends can constrain decoding to a permutation of the candidate numbers
(``PermutationLogitsProcessor``) and score candidates from one prefill (first-token mode).
"""

from __future__ import annotations

import base64
import io
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from rag.errors import ConfigError, MMSearchError, ModelLoadError

logger = logging.getLogger(__name__)


class VLMError(MMSearchError):
    """A VLM call failed (endpoint down, timeout, generation error)."""


@dataclass(frozen=True)
class VLMReply:
    """The decoded new text and, where known, token counts."""

    text: str
    prompt_tokens: int | None = None
    new_tokens: int | None = None


class VLMBackend(ABC):
    """Generate text for (prompt, one image)."""

    name = "vlm"
    supports_constrained = False
    supports_first_token = False

    @abstractmethod
    def generate(
        self,
        prompt: str,
        image: Image.Image | None,
        *,
        max_new_tokens: int = 128,
        permutation_of: int | None = None,
    ) -> VLMReply:
        """Greedy generation. ``permutation_of=k`` asks for a ranking of 1..k enforced by the
        backend where it can (transformers: logits processor; openai: structured output)."""

    def candidate_scores(self, prompt: str, image: Image.Image | None, k: int) -> list[float]:
        """Logits of the first generated token for "1".."k" (first-token ranking)."""
        raise NotImplementedError(f"the {self.name} backend has no first-token scoring")


# -- constrained decoding -----------------------------------------------------------------
class PermutationLogitsProcessor:
    """Only lets the model write a permutation of the candidate numbers: an unused number,
    then a separator, ... and the end token after the k-th number (DESIGN.md §6)."""

    def __init__(
        self, prompt_len: int, candidate_ids: list[int], sep_id: int, end_ids: list[int]
    ) -> None:
        self.prompt_len = prompt_len
        self.candidates = list(candidate_ids)
        self.sep = sep_id
        self.end = list(end_ids)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        mask = torch.full_like(scores, float("-inf"))
        for row in range(input_ids.shape[0]):
            generated = input_ids[row, self.prompt_len :].tolist()
            used = {t for t in generated if t in self.candidates}
            if len(used) == len(self.candidates):
                allowed = self.end
            elif not generated or generated[-1] == self.sep:
                allowed = [t for t in self.candidates if t not in used]
            else:
                allowed = [self.sep]
            mask[row, allowed] = 0.0
        return scores + mask


def single_token_ids(tokenizer: Any, texts: list[str]) -> list[int] | None:
    """Token ids of ``texts`` when each is exactly one token, else None."""
    ids = []
    for t in texts:
        enc = tokenizer.encode(t, add_special_tokens=False)
        if len(enc) != 1:
            return None
        ids.append(enc[0])
    return ids


# -- transformers ------------------------------------------------------------------------
def _require_pinned(model_id: str, revision: str | None, trust_remote_code: bool) -> None:
    if trust_remote_code and (not revision or revision in ("main", "master")):
        raise ConfigError(
            f"running {model_id}'s own code needs a pinned revision: set MMSEARCH_VLM_REVISION "
            "to a commit hash"
        )


def _load_pretrained(
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

    from rag.visualized_bge import resolve_device, resolve_dtype

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
        _require_pinned(str(model_id), revision, trust_remote_code)
        model, processor = _load_pretrained(
            model_id,
            "AutoModelForImageTextToText",
            device=device,
            dtype=dtype,
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
        return cls(model=model, processor=processor)

    # The model code may modify input tensors in place (Phi-3 Vision clamps input_ids), so
    # every call builds fresh processor outputs.
    def _inputs(self, prompt: str, image: Image.Image | None) -> Any:
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

    def generate(
        self,
        prompt: str,
        image: Image.Image | None,
        *,
        max_new_tokens: int = 128,
        permutation_of: int | None = None,
    ) -> VLMReply:
        import torch
        from transformers import LogitsProcessorList

        inputs = self._inputs(prompt, image)
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

    def candidate_scores(self, prompt: str, image: Image.Image | None, k: int) -> list[float]:
        import torch

        cand = single_token_ids(self.tokenizer, [str(i) for i in range(1, k + 1)])
        if cand is None:
            raise VLMError(f"cannot score {k} candidates: numbers are not single tokens")
        inputs = self._inputs(prompt, image)
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0, -1]
        return [float(logits[i]) for i in cand]


def patch_dynamic_cache() -> list[str]:
    """Give transformers' DynamicCache the three members Phi-3 Vision's remote code still calls
    (removed in 4.49-4.54); values as DESIGN.md §6 verified against 4.48. Returns what was added.
    ``get_max_length`` must be None: ``get_max_cache_shape()`` returns -1 from 4.54 on."""
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
    """Phi-3 / Phi-3.5 Vision (backend ``phi3v``): remote code on explicit opt-in, pinned."""

    name = "phi3v"

    def _inputs(self, prompt: str, image: Image.Image | None) -> Any:
        tag = "<|image_1|>\n" if image is not None else ""
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": tag + prompt}],
            tokenize=False,
            add_generation_prompt=True,
        )
        images = [image] if image is not None else None
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
        num_crops: int = 16,
    ) -> Phi3VisionVLM:
        import importlib.util

        if not trust_remote_code:
            raise ConfigError(
                f"{model_id} runs its own Python code from the Hub: opt in with "
                "MMSEARCH_VLM_TRUST_REMOTE_CODE=true and pin MMSEARCH_VLM_REVISION, or use the "
                "openai backend (vLLM) / --no-rerank"
            )
        _require_pinned(str(model_id), revision, trust_remote_code)
        patch_dynamic_cache()
        attn = {} if importlib.util.find_spec("flash_attn") else {"_attn_implementation": "eager"}
        model, processor = _load_pretrained(
            model_id,
            "AutoModelForCausalLM",
            device=device,
            dtype=dtype,
            revision=revision,
            trust_remote_code=True,
            processor_kwargs={"num_crops": num_crops},
            model_kwargs=attn,
        )
        return cls(model=model, processor=processor, end_token_ids=PHI3V_END_IDS)


# -- OpenAI-compatible endpoint ------------------------------------------------------------
def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ranking_schema(k: int) -> dict[str, Any]:
    """JSON schema for a structured-output ranking of 1..k (uniqueness is best effort)."""
    return {
        "type": "object",
        "properties": {
            "ranking": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": k},
                "minItems": k,
                "maxItems": k,
                "uniqueItems": True,
            },
            "reason": {"type": "string", "maxLength": 400},
        },
        "required": ["ranking", "reason"],
    }


class OpenAIVLM(VLMBackend):
    """An OpenAI-compatible chat endpoint (vLLM, ...) with image parts as data URLs.

    Args:
        base_url: e.g. ``http://host:8000/v1``.
        model: the served model name.
        api_key: bearer token, if the endpoint needs one (never logged).
        timeout_s: per request; retries: on connection errors and 429/5xx.
        structured: send vLLM's ``structured_outputs`` JSON schema for rankings.
    """

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: Any = None,
        timeout_s: float = 120.0,
        retries: int = 2,
        structured: bool = True,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"MMSEARCH_VLM_BASE_URL must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.structured = structured
        self.supports_constrained = structured

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIVLM(base_url={self.base_url!r}, model={self.model!r})"

    def _headers(self) -> dict[str, str]:
        key = self._api_key
        if key is None:
            return {}
        value = key.get_secret_value() if hasattr(key, "get_secret_value") else str(key)
        return {"Authorization": f"Bearer {value}"} if value else {}

    def generate(
        self,
        prompt: str,
        image: Image.Image | None,
        *,
        max_new_tokens: int = 128,
        permutation_of: int | None = None,
    ) -> VLMReply:
        import httpx

        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        if image is not None:
            content.append({"type": "image_url", "image_url": {"url": _data_url(image)}})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": max_new_tokens,
        }
        if permutation_of and self.structured:
            body["structured_outputs"] = {"json": ranking_schema(permutation_of)}
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(0.5 * 2**attempt, 4.0))
            try:
                resp = httpx.post(
                    f"{self.base_url}/chat/completions",
                    json=body,
                    headers=self._headers(),
                    timeout=self.timeout_s,
                )
            except httpx.TimeoutException as e:
                last = VLMError(f"VLM endpoint {self.base_url} timed out after {self.timeout_s:g}s")
                last.__cause__ = e
                continue
            except httpx.HTTPError as e:
                last = VLMError(f"VLM endpoint {self.base_url} unreachable ({type(e).__name__})")
                last.__cause__ = e
                continue
            if resp.status_code == 400 and "structured_outputs" in body:
                # Endpoints without structured outputs reject the field: ask plainly instead.
                logger.info("endpoint rejected structured_outputs; retrying without")
                body.pop("structured_outputs")
                self.structured = self.supports_constrained = False
                last = VLMError(f"VLM endpoint {self.base_url}: HTTP 400")
                continue
            if resp.status_code in (429, 500, 502, 503, 504):
                last = VLMError(f"VLM endpoint {self.base_url}: HTTP {resp.status_code}")
                continue
            if resp.status_code != 200:
                raise VLMError(
                    f"VLM endpoint {self.base_url}: HTTP {resp.status_code}: {resp.text[:200]}"
                )
            try:
                data = resp.json()
                text = data["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise VLMError(f"VLM endpoint {self.base_url}: malformed response") from e
            usage = data.get("usage") or {}
            return VLMReply(
                text=str(text).strip(),
                prompt_tokens=usage.get("prompt_tokens"),
                new_tokens=usage.get("completion_tokens"),
            )
        assert last is not None
        raise last
