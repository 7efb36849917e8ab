"""`RerankOutcome`: what one rerank did, as a value (no side channel)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llama_index.core.schema import NodeWithScore

RerankStatus = Literal["ok", "repaired", "fallback", "skipped"]


@dataclass
class RerankOutcome:
    """The reordered candidates and how the order was obtained.

    Attributes:
        nodes: the candidates, best first (always all of them, unless ``top_n`` cut the list).
        status: ``ok`` (a complete valid ranking), ``repaired`` (what was fixed is in
            ``detail``), ``fallback`` (retrieval order kept; the error is in ``detail``) or
            ``skipped`` (no rerank ran; ``detail`` says why).
        detail: one line for the user.
        caption: the VLM's caption of the query image, if one was made.
        reason: the VLM's reason for its top pick, if it gave one.
        timings: seconds per stage (``caption_s``, ``grid_s``, ``generate_s``, ``reason_s``).
        tokens: prompt and generated token counts of the ranking call, where the backend says.
    """

    nodes: list[NodeWithScore]
    status: RerankStatus
    detail: str = ""
    caption: str | None = None
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """``{"status", "detail"}``: the ``rerank`` object of the search JSON."""
        return {"status": self.status, "detail": self.detail}
