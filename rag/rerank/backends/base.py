"""The interface every reranker VLM backend implements: generate text for (prompt, one image)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

from PIL import Image

# How much of the image a call needs, in backend-neutral terms:
#   "low"  - the gist of one photo (the reranker's caption of the query image);
#   "high" - every detail (the candidate grid: numbered tiles and labels must stay legible).
# A backend maps it to its own resolution knob or ignores it; phi3v maps it to its crop count
# (MMSEARCH_CAPTION_NUM_CROPS / MMSEARCH_RERANK_NUM_CROPS), hf and openai ignore it.
ImageDetail = Literal["low", "high"]


def is_pinned(revision: str | None) -> bool:
    """A Hub revision that names fixed code: set, and not a moving branch name."""
    return bool(revision) and revision not in ("main", "master")


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
        detail: ImageDetail = "high",
    ) -> VLMReply:
        """Greedy generation. ``permutation_of=k`` asks for a ranking of 1..k enforced by the
        backend where it can (transformers: logits processor; openai: structured output).
        ``detail`` says how closely the image must be seen (:data:`ImageDetail`)."""

    def candidate_scores(
        self, prompt: str, image: Image.Image | None, k: int, *, detail: ImageDetail = "high"
    ) -> list[float]:
        """Logits of the first generated token for "1".."k" (first-token ranking)."""
        raise NotImplementedError(f"the {self.name} backend has no first-token scoring")
