"""`VLMReranker`: a LlamaIndex node postprocessor that reranks candidates with a VLM.

Caption the query image (cached by content), draw the composite grid, ask the VLM for a
ranking, parse it with guardrails, reorder. The result is always a complete permutation of the
candidates; when the model cannot deliver one the retrieval order is kept and the status says
so (``ok`` / ``repaired`` / ``fallback``), never silently.
"""

from __future__ import annotations

import hashlib
import logging
import random
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
from rag.display import node_image_path
from rag.grid import MAX_CANDIDATES, build_grid
from rag.images import load_image, read_bytes
from rag.rank_parser import ParsedRanking, parse_ranking
from rag.report import record

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


class VLMReranker(BaseNodePostprocessor, PromptMixin):
    """Rerank retrieved image nodes with a vision-language model.

    Args:
        vlm: a ``rag.vlm.VLMBackend`` (or pass ``vlm_factory`` to load it on first use).
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
            raise ValueError("VLMReranker needs a vlm or a vlm_factory")
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

    # -- pieces ---------------------------------------------------------------------------
    @property
    def vlm(self) -> Any:
        if self._vlm is None:
            if self._vlm_error is not None:
                raise RuntimeError(self._vlm_error)
            assert self._vlm_factory is not None
            try:
                self._vlm = self._vlm_factory()
            except Exception as e:
                self._vlm_error = f"VLM unavailable: {e}"
                raise RuntimeError(self._vlm_error) from e
        return self._vlm

    def caption(self, image_path: str) -> str | None:
        """One-sentence caption of the query image, cached by the image's content hash."""
        key = hashlib.sha256(read_bytes(image_path)).hexdigest()
        if key in self._captions:
            self._captions.move_to_end(key)
            return self._captions[key]
        reply = self.vlm.generate(
            self._prompts["caption"].format(),
            load_image(image_path),
            max_new_tokens=self.caption_max_new_tokens,
        )
        text = " ".join(reply.text.split())[:300] or None
        if text:
            self._captions[key] = text
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

    def _one_pass(self, grid: Any, prompt: str, k: int) -> tuple[ParsedRanking, dict[str, Any]]:
        vlm = self.vlm
        stats: dict[str, Any] = {}
        if self.strategy == "first-token" and vlm.supports_first_token and k <= 9:
            scores = vlm.candidate_scores(prompt, grid, k)
            order = sorted(range(1, k + 1), key=lambda c: (-scores[c - 1], c))
            return ParsedRanking(order, "ok", None, "ranked by first-token logits", order), stats
        if self.constrained and vlm.supports_constrained and k <= 9:
            reply = vlm.generate(prompt, grid, max_new_tokens=self.max_new_tokens, permutation_of=k)
            text = reply.text if reply.text.lstrip().startswith("{") else f"[{reply.text}]"
        else:
            reply = vlm.generate(prompt, grid, max_new_tokens=self.max_new_tokens)
            text = reply.text
        stats = {"prompt_tokens": reply.prompt_tokens, "new_tokens": reply.new_tokens}
        return parse_ranking(text, k), stats

    def _reason(self, grid: Any, instruction: str, caption: str | None, top: int) -> str | None:
        prompt = self._prompts["reason"].format(
            instruction=instruction.strip() or DEFAULT_INSTRUCTION,
            caption=caption or "(no reference image)",
            top=top,
        )
        reply = self.vlm.generate(prompt, grid, max_new_tokens=60)
        return " ".join(reply.text.split())[:400] or None

    # -- the postprocessor ------------------------------------------------------------------
    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes or query_bundle is None:
            return nodes
        head, tail = nodes[:MAX_CANDIDATES], nodes[MAX_CANDIDATES:]
        k = len(head)
        instruction = query_bundle.query_str or ""
        query_image = query_bundle.image_path
        timings: dict[str, float] = {}
        caption = reason = None
        try:
            if query_image:  # a text-only query has nothing to caption
                t0 = time.perf_counter()
                caption = self.caption(query_image)
                timings["caption_s"] = time.perf_counter() - t0
            record(caption=caption)
            parsed, reason = self._rank(head, instruction, caption, query_image, timings)
        except Exception as e:
            if self.raise_on_failure:
                raise
            # The status and detail reach the user with the results; the log is for debugging.
            logger.info("rerank failed, keeping retrieval order: %s", e)
            message = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
            parsed = ParsedRanking(list(range(1, k + 1)), "fallback", None, message[:300])
        ordered = [head[i - 1] for i in parsed.ranking] + tail
        for pos, nws in enumerate(ordered, start=1):
            nws.node.metadata["rerank_rank"] = pos
            if parsed.status != "fallback":  # a fallback keeps the retrieval scores
                nws.score = (len(ordered) - pos + 1) / len(ordered)
        record(
            reason=reason or parsed.reason,
            rerank_status=parsed.status,
            rerank_detail=parsed.detail,
            **{f"timings_{k_}": v for k_, v in timings.items()},
        )
        return ordered[: self.top_n] if self.top_n else ordered

    def _rank(
        self,
        head: list[NodeWithScore],
        instruction: str,
        caption: str | None,
        query_image: str | None,
        timings: dict[str, float],
    ) -> tuple[ParsedRanking, str | None]:
        k = len(head)
        images = [node_image_path(n.node) for n in head]
        prompt = self.rank_prompt(k, instruction, caption, query_image is not None)
        rng = random.Random(self.seed)
        rankings: list[list[int]] = []
        results: list[ParsedRanking] = []
        grid = None
        for p in range(self.passes):
            order = list(range(1, k + 1))
            if p:
                rng.shuffle(order)
            t0 = time.perf_counter()
            grid = build_grid([images[i - 1] for i in order], query=query_image, tile=self.tile)
            timings["grid_s"] = timings.get("grid_s", 0.0) + time.perf_counter() - t0
            t0 = time.perf_counter()
            parsed, stats = self._one_pass(grid, prompt, k)
            timings["generate_s"] = timings.get("generate_s", 0.0) + time.perf_counter() - t0
            if stats.get("prompt_tokens") is not None:
                record(
                    rerank_prompt_tokens=stats["prompt_tokens"],
                    rerank_new_tokens=stats["new_tokens"],
                )
            results.append(parsed)
            rankings.append([order[pos - 1] for pos in parsed.ranking])  # grid -> original
        if self.passes == 1:
            final = results[0]
            final = ParsedRanking(rankings[0], final.status, final.reason, final.detail, final.raw)
        else:
            statuses = {r.status for r in results}
            status = (
                "fallback"
                if statuses == {"fallback"}
                else "ok"
                if statuses == {"ok"}
                else "repaired"
            )
            detail = f"Borda aggregate of {self.passes} shuffled passes" + "".join(
                f"; pass {i + 1}: {r.status} {r.detail}".rstrip()
                for i, r in enumerate(results)
                if r.status != "ok"
            )
            final = ParsedRanking(_aggregate(rankings, k), status, results[0].reason, detail)
        reason = final.reason
        if (
            self.with_reason
            and reason is None
            and final.status != "fallback"
            and self.strategy == "listwise"
            and self.passes == 1
            and grid is not None
        ):
            t0 = time.perf_counter()
            reason = self._reason(grid, instruction, caption, results[0].ranking[0])
            timings["reason_s"] = time.perf_counter() - t0
        return final, reason


def vlm_configuration_problem(settings: Any) -> str | None:
    """Why the configured VLM cannot be used at all (then rerank is skipped), or None."""
    s = settings
    if s.vlm_backend == "phi3v" and not s.vlm_trust_remote_code:
        return (
            "no VLM configured: Phi-3 Vision runs its own code from the Hub; set "
            "MMSEARCH_VLM_TRUST_REMOTE_CODE=true and MMSEARCH_VLM_REVISION=<commit>, or "
            "MMSEARCH_VLM_BACKEND=openai with MMSEARCH_VLM_BASE_URL"
        )
    if s.vlm_backend == "openai" and not s.vlm_base_url:
        return "no VLM configured: MMSEARCH_VLM_BACKEND=openai needs MMSEARCH_VLM_BASE_URL"
    return None


def build_reranker_from_settings(settings: Any) -> VLMReranker:
    """A reranker for ``MMSEARCH_VLM_*``; the model loads on the first rerank, and a load
    failure shows as ``fallback`` with its reason instead of breaking search."""
    from rag import vlm as backends

    s = settings

    def factory() -> Any:
        if s.vlm_backend == "openai":
            if not s.vlm_base_url:
                raise backends.ConfigError(
                    "MMSEARCH_VLM_BACKEND=openai needs MMSEARCH_VLM_BASE_URL"
                )
            return backends.OpenAIVLM(
                base_url=s.vlm_base_url,
                model=s.vlm_model,
                api_key=s.vlm_api_key,
                timeout_s=s.vlm_timeout_s,
            )
        cls = backends.Phi3VisionVLM if s.vlm_backend == "phi3v" else backends.TransformersVLM
        return cls.from_pretrained(
            s.vlm_model,
            device=s.device,
            dtype=s.dtype,
            revision=s.vlm_revision,
            trust_remote_code=s.vlm_trust_remote_code,
        )

    return VLMReranker(vlm_factory=factory, strategy=s.rerank_strategy, passes=s.rerank_passes)
