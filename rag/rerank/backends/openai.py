"""Backend ``openai``: an OpenAI-compatible chat endpoint with image parts (e.g. vLLM serving
Phi-3.5-vision), with vLLM structured outputs for rankings where the endpoint accepts them."""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

from PIL import Image

from rag.core.retry import Retry, with_retries
from rag.errors import ConfigError, VLMError
from rag.rerank.backends.base import ImageDetail, VLMBackend, VLMReply

logger = logging.getLogger(__name__)


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

    def _body(self, prompt: str, image: Image.Image | None, max_new_tokens: int, k: int | None):
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        if image is not None:
            content.append({"type": "image_url", "image_url": {"url": _data_url(image)}})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": max_new_tokens,
        }
        if k and self.structured:
            body["structured_outputs"] = {"json": ranking_schema(k)}
        return body

    def _post_once(self, body: dict[str, Any]) -> Any:
        """One request; transient failures raise ``Retry``. Returns the 200 response."""
        import httpx

        try:
            resp = httpx.post(
                f"{self.base_url}/chat/completions",
                json=body,
                headers=self._headers(),
                timeout=self.timeout_s,
            )
        except httpx.TimeoutException as e:
            err = VLMError(f"VLM endpoint {self.base_url} timed out after {self.timeout_s:g}s")
            raise Retry(err) from e
        except httpx.HTTPError as e:
            err = VLMError(f"VLM endpoint {self.base_url} unreachable ({type(e).__name__})")
            raise Retry(err) from e
        if resp.status_code == 400 and "structured_outputs" in body:
            # Endpoints without structured outputs reject the field: ask plainly instead.
            logger.info("endpoint rejected structured_outputs; retrying without")
            body.pop("structured_outputs")
            self.structured = self.supports_constrained = False
            raise Retry(VLMError(f"VLM endpoint {self.base_url}: HTTP 400"))
        if resp.status_code in (429, 500, 502, 503, 504):
            raise Retry(VLMError(f"VLM endpoint {self.base_url}: HTTP {resp.status_code}"))
        if resp.status_code != 200:
            raise VLMError(
                f"VLM endpoint {self.base_url}: HTTP {resp.status_code}: {resp.text[:200]}"
            )
        return resp

    def generate(
        self,
        prompt: str,
        image: Image.Image | None,
        *,
        max_new_tokens: int = 128,
        permutation_of: int | None = None,
        detail: ImageDetail = "high",
    ) -> VLMReply:
        # ``detail`` is ignored: the server sizes images itself (vLLM: its num_crops setting).
        body = self._body(prompt, image, max_new_tokens, permutation_of)
        resp = with_retries(lambda: self._post_once(body), retries=self.retries)
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
