"""`VLMReranker`: a LlamaIndex node postprocessor that reranks candidates with a VLM.

Caption the query image (cached by content), draw the composite grid, ask the VLM for a
ranking, parse it with guardrails, reorder. The result is always a complete permutation of the
candidates; when the model cannot deliver one the retrieval order is kept and the status says
so (``ok`` / ``repaired`` / ``fallback``), never silently.

:meth:`VLMReranker.rerank` returns a typed :class:`RerankOutcome`; used as a stock LlamaIndex
postprocessor (``postprocess_nodes``) the outcome travels on the returned nodes' metadata
(``rerank_status``, ``rerank_detail``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.prompts import PromptTemplate
from llama_index.core.prompts.mixin import PromptMixin
from llama_index.core.schema import NodeWithScore, QueryBundle
from pydantic import Field, PrivateAttr

from prompts import load_prompt
from rag.core.images import DecodedImage
from rag.core.query import query_image
from rag.errors import ConfigError, MMSearchError, VLMError
from rag.rerank.grid import MAX_CANDIDATES, build_grid
from rag.rerank.outcome import RerankOutcome
from rag.rerank.parser import ParsedRanking, parse_ranking
from rag.store.schema import node_image_path

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "find products that match the reference image"
_CAPTION_CACHE = 256


def _aggregate(rankings: list[list[int]], k: int) -> list[int]:
    """Borda count over several rankings (original indices, 1-based); ties keep retrieval order."""
    points = {c: 0 for c in range(1, k + 1)}
    for ranking in rankings:
        for pos, c in enumerate(ranking):
            points[c] += k - pos
    return sorted(points, key=lambda c: (-points[c], c))


def _combine(passes: list[tuple[list[int], ParsedRanking]], k: int) -> ParsedRanking:
    """One ranking (original candidate numbers) from one or several passes."""
    if len(passes) == 1:
        order, parsed = passes[0]
        return ParsedRanking(order, parsed.status, parsed.reason, parsed.detail)
    results = [parsed for _, parsed in passes]
    statuses = {r.status for r in results}
    status: Literal["ok", "repaired", "fallback"] = (
        "fallback" if statuses == {"fallback"} else "ok" if statuses == {"ok"} else "repaired"
    )
    detail = f"Borda aggregate of {len(passes)} shuffled passes" + "".join(
        f"; pass {i + 1}: {r.status} {r.detail}".rstrip()
        for i, r in enumerate(results)
        if r.status != "ok"
    )
    return ParsedRanking(_aggregate([o for o, _ in passes], k), status, results[0].reason, detail)


class _Timer:
    """Adds the seconds a block takes to ``timings[key]``."""

    def __init__(self, timings: dict[str, float], key: str) -> None:
        self.timings, self.key = timings, key

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.t0
        self.timings[self.key] = self.timings.get(self.key, 0.0) + elapsed


class VLMReranker(BaseNodePostprocessor, PromptMixin):
    """Rerank retrieved image nodes with a vision-language model.

    Args:
        vlm: a ``rag.rerank.backends.VLMBackend`` (or pass ``vlm_factory`` to load it on
            first use; the load happens once, under a lock).
        strategy: ``listwise`` (generate a ranking) or ``first-token`` (rank by the first
            token's logits over the candidate numbers: one prefill, no decoding).
        passes: >1 reshuffles the grid per pass and aggregates (counters position bias).
        constrained: enforce a valid permutation while decoding where the backend can.
        with_reason: also ask for a one-sentence reason (a short second call when the
            ranking was constrained).
        top_n: keep only the best ``top_n`` after reranking.
        raise_on_failure: raise VLM errors instead of falling back to retrieval order.
    """

    strategy: Literal["listwise", "first-token"] = Field(default="listwise")
    passes: int = Field(default=1, ge=1, le=10, description="Shuffled passes to aggregate.")
    constrained: bool = Field(default=True, description="Constrain decoding to a permutation.")
    with_reason: bool = Field(default=True, description="Ask the model why #1 fits.")
    top_n: int | None = Field(default=None, ge=1, description="Keep the best N.")
    raise_on_failure: bool = Field(default=False, description="Raise instead of falling back.")
    tile: int = Field(default=300, ge=64, description="Grid tile size in pixels.")
    max_new_tokens: int = Field(default=160, ge=8)
    caption_max_new_tokens: int = Field(default=48, ge=4)
    seed: int = Field(default=0, description="Seed for the pass shuffles.")

    _vlm: Any = PrivateAttr(default=None)
    _vlm_factory: Callable[[], Any] | None = PrivateAttr(default=None)
    _vlm_error: str | None = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)
    _captions: OrderedDict[str, str] = PrivateAttr(default_factory=OrderedDict)
    _prompts: dict[str, PromptTemplate] = PrivateAttr(default_factory=dict)

    def __init__(
        self,
        *,
        vlm: Any = None,
        vlm_factory: Callable[[], Any] | None = None,
        prompts: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if vlm is None and vlm_factory is None:
            raise ConfigError("VLMReranker needs a vlm or a vlm_factory")
        super().__init__(**kwargs)
        self._vlm = vlm
        self._vlm_factory = vlm_factory
        self._prompts = {
            name: load_prompt(name, (prompts or {}).get(name))
            for name in ("caption", "rerank", "rerank_text", "reason")
        }

    @classmethod
    def class_name(cls) -> str:
        return "VLMReranker"

    # -- prompts (PromptMixin) --------------------------------------------------------------
    def _get_prompts(self) -> dict[str, Any]:
        return dict(self._prompts)

    def _update_prompts(self, prompts: dict[str, Any]) -> None:
        for name, tmpl in prompts.items():
            text = tmpl.get_template() if hasattr(tmpl, "get_template") else str(tmpl)
            self._prompts[name] = load_prompt(name, text)

    def _get_prompt_modules(self) -> dict[str, Any]:
        return {}

    # -- pieces ---------------------------------------------------------------------------
    @property
    def vlm(self) -> Any:
        """The backend; a lazy load runs once (under a lock) and a failed load is remembered."""
        if self._vlm is not None:
            return self._vlm
        with self._lock:
            if self._vlm is None:
                if self._vlm_error is not None:
                    raise VLMError(self._vlm_error)
                assert self._vlm_factory is not None
                try:
                    self._vlm = self._vlm_factory()
                except Exception as e:
                    self._vlm_error = f"VLM unavailable: {e}"
                    raise VLMError(self._vlm_error) from e
        return self._vlm

    def caption(self, image: DecodedImage) -> str | None:
        """One-sentence caption of the query image, cached by the image's content hash."""
        with self._lock:
            if image.sha256 in self._captions:
                self._captions.move_to_end(image.sha256)
                return self._captions[image.sha256]
        reply = self.vlm.generate(
            self._prompts["caption"].format(),
            image.image,
            max_new_tokens=self.caption_max_new_tokens,
            detail="low",  # one photo's gist (phi3v: MMSEARCH_CAPTION_NUM_CROPS)
        )
        text = " ".join(reply.text.split())[:300] or None
        if text:
            with self._lock:
                self._captions[image.sha256] = text
                while len(self._captions) > _CAPTION_CACHE:
                    self._captions.popitem(last=False)
        return text

    def rank_prompt(self, k: int, instruction: str, caption: str | None, has_query: bool) -> str:
        instruction = instruction.strip() or DEFAULT_INSTRUCTION
        if has_query:
            return self._prompts["rerank"].format(
                k=k, instruction=instruction, caption=caption or "(no description available)"
            )
        return self._prompts["rerank_text"].format(k=k, instruction=instruction)

    def _one_pass(self, grid: Any, prompt: str, k: int, tokens: dict[str, int]) -> ParsedRanking:
        vlm = self.vlm
        if self.strategy == "first-token" and vlm.supports_first_token and k <= 9:
            scores = vlm.candidate_scores(prompt, grid, k, detail="high")
            order = sorted(range(1, k + 1), key=lambda c: (-scores[c - 1], c))
            return ParsedRanking(order, "ok", None, "ranked by first-token logits")
        if self.constrained and vlm.supports_constrained and k <= 9:
            reply = vlm.generate(
                prompt, grid, max_new_tokens=self.max_new_tokens, permutation_of=k, detail="high"
            )
            text = reply.text if reply.text.lstrip().startswith("{") else f"[{reply.text}]"
        else:
            reply = vlm.generate(prompt, grid, max_new_tokens=self.max_new_tokens, detail="high")
            text = reply.text
        if reply.prompt_tokens is not None:
            tokens["prompt_tokens"] = reply.prompt_tokens
        if reply.new_tokens is not None:
            tokens["new_tokens"] = reply.new_tokens
        return parse_ranking(text, k)

    def _reason(self, grid: Any, instruction: str, caption: str | None, top: int) -> str | None:
        prompt = self._prompts["reason"].format(
            instruction=instruction.strip() or DEFAULT_INSTRUCTION,
            caption=caption or "(no reference image)",
            top=top,
        )
        reply = self.vlm.generate(prompt, grid, max_new_tokens=60, detail="high")
        return " ".join(reply.text.split())[:400] or None

    def _passes(
        self,
        images: list[str | None],
        query: DecodedImage | None,
        prompt: str,
        timings: dict[str, float],
        tokens: dict[str, int],
    ) -> tuple[list[tuple[list[int], ParsedRanking]], Any]:
        """Run every pass; returns (original-number order, parsed reply) per pass, last grid."""
        k = len(images)
        rng = random.Random(self.seed)
        passes = []
        grid = None
        for p in range(self.passes):
            order = list(range(1, k + 1))
            if p:
                rng.shuffle(order)
            with _Timer(timings, "grid_s"):
                grid = build_grid([images[i - 1] for i in order], query=query, tile=self.tile)
            with _Timer(timings, "generate_s"):
                parsed = self._one_pass(grid, prompt, k, tokens)
            passes.append(([order[pos - 1] for pos in parsed.ranking], parsed))  # grid -> orig
        return passes, grid

    def _wants_reason(self, ranking: ParsedRanking) -> bool:
        return (
            self.with_reason
            and ranking.reason is None
            and ranking.status != "fallback"
            and self.strategy == "listwise"
            and self.passes == 1
        )

    # -- the rerank ---------------------------------------------------------------------------
    def rerank(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> RerankOutcome:
        """Rerank ``nodes`` for ``query_bundle``; never raises unless ``raise_on_failure``."""
        if not nodes:
            return RerankOutcome(nodes=[], status="skipped", detail="no candidates")
        head, tail = nodes[:MAX_CANDIDATES], nodes[MAX_CANDIDATES:]
        instruction = query_bundle.query_str or ""
        timings: dict[str, float] = {}
        tokens: dict[str, int] = {}
        caption = reason = None
        try:
            query = query_image(query_bundle)
            if query is not None:  # a text-only query has nothing to caption
                with _Timer(timings, "caption_s"):
                    caption = self.caption(query)
            prompt = self.rank_prompt(len(head), instruction, caption, query is not None)
            images = [node_image_path(n.node) for n in head]
            passes, grid = self._passes(images, query, prompt, timings, tokens)
            ranking = _combine(passes, len(head))
            reason = ranking.reason
            if self._wants_reason(ranking):
                with _Timer(timings, "reason_s"):
                    reason = self._reason(grid, instruction, caption, passes[0][1].ranking[0])
        except Exception as e:
            if self.raise_on_failure:
                raise
            # The status and detail reach the user with the results; the log is for debugging.
            logger.info("rerank failed, keeping retrieval order: %s", e)
            message = str(e) if isinstance(e, MMSearchError) else f"{type(e).__name__}: {e}"
            ranking = ParsedRanking(list(range(1, len(head) + 1)), "fallback", None, message[:300])
        ordered = [head[i - 1] for i in ranking.ranking] + tail
        for pos, nws in enumerate(ordered, start=1):
            nws.node.metadata["rerank_rank"] = pos
            if ranking.status != "fallback":  # a fallback keeps the retrieval scores
                nws.score = (len(ordered) - pos + 1) / len(ordered)
        return RerankOutcome(
            nodes=ordered[: self.top_n] if self.top_n else ordered,
            status=ranking.status,
            detail=ranking.detail,
            caption=caption,
            reason=reason,
            timings=timings,
            tokens=tokens,
        )

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:  # nothing to rank against: say so on the nodes
            outcome = RerankOutcome(nodes, "skipped", "no query given to the reranker")
        else:
            outcome = self.rerank(nodes, query_bundle)
        for nws in outcome.nodes:
            nws.node.metadata["rerank_status"] = outcome.status
            nws.node.metadata["rerank_detail"] = outcome.detail
        return outcome.nodes
