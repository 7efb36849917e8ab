"""The interface every reranker VLM backend implements: generate text for (prompt, one image)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from PIL import Image


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
    ) -> VLMReply:
        """Greedy generation. ``permutation_of=k`` asks for a ranking of 1..k enforced by the
        backend where it can (transformers: logits processor; openai: structured output)."""

    def candidate_scores(self, prompt: str, image: Image.Image | None, k: int) -> list[float]:
        """Logits of the first generated token for "1".."k" (first-token ranking)."""
        raise NotImplementedError(f"the {self.name} backend has no first-token scoring")
