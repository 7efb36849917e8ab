import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle
from PIL import Image

import rag
from prompts import load_prompt
from rag.core.settings import Settings
from rag.errors import ConfigError
from rag.factory import build_query_engine
from rag.rerank.backends.base import VLMBackend, VLMReply
from rag.rerank.backends.openai import OpenAIVLM
from rag.rerank.backends.phi3v import Phi3VisionVLM, patch_dynamic_cache
from rag.rerank.parser import parse_ranking
from rag.rerank.postprocessor import VLMReranker, _aggregate
from tests.helpers import make_image

COLORS = [
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (128, 0, 0),
    (0, 128, 0),
    (0, 0, 128),
]


class FakeVLM(VLMBackend):
    """Scripted replies; records every prompt and image it was shown."""

    name = "fake"

    def __init__(self, replies=None, *, fail: Exception | None = None, constrained=False):
        self.replies = list(replies or [])
        self.calls: list[tuple[str, Image.Image | None, dict]] = []
        self.fail = fail
        self.supports_constrained = constrained

    def generate(self, prompt, image, *, max_new_tokens=128, permutation_of=None, detail="high"):
        self.calls.append((prompt, image, {"permutation_of": permutation_of, "detail": detail}))
        if self.fail:
            raise self.fail
        return VLMReply(self.replies.pop(0), prompt_tokens=10, new_tokens=5)


class ColorRankingVLM(VLMBackend):
    """Reads the grid's tiles and ranks them by a fixed colour preference (tests the
    grid-position -> candidate mapping across shuffled passes)."""

    name = "colors"

    def __init__(self, preference):
        self.preference = preference

    def generate(self, prompt, image, *, max_new_tokens=128, permutation_of=None, detail="high"):
        if "Describe" in prompt:
            return VLMReply("a test image")
        k = int(prompt.split("are ")[1].split(" candidate")[0])
        tile, gap = 300, 7
        left = tile + 3 * gap
        arr = np.asarray(image)
        seen = []
        for i in range(k):
            r, c = divmod(i, 3)
            x = left + gap + c * (tile + gap) + tile // 2
            y = gap + r * (tile + gap) + tile // 2 + 40
            seen.append(tuple(int(v) for v in arr[y, x]))
        order = sorted(range(1, k + 1), key=lambda p: self.preference.index(seen[p - 1]))
        return VLMReply(json.dumps({"ranking": order, "reason": "colour"}))


def _nodes(tmp_path: Path, k: int = 9) -> list[NodeWithScore]:
    out = []
    for i, p in enumerate(_images(tmp_path, k)):
        node = ImageNode(
            id_=f"n{i}",
            image_path=str(p),
            metadata={"image_path": str(p), "retrieval_score": 1 - i / 10, "retrieval_rank": i + 1},
        )
        out.append(NodeWithScore(node=node, score=1 - i / 10))
    return out


def _images(tmp_path: Path, k: int = 9) -> list[Path]:
    paths = []
    for i in range(k):
        p = tmp_path / f"c{i}.png"
        Image.new("RGB", (120, 120), COLORS[i % len(COLORS)]).save(p)
        paths.append(p)
    return paths


def _query_file(tmp_path: Path) -> Path:
    q = tmp_path / "query.png"
    Image.new("RGB", (200, 150), (10, 20, 30)).save(q)
    return q


def _query(tmp_path: Path, text="a phone case with this") -> QueryBundle:
    return QueryBundle(query_str=text, image_path=str(_query_file(tmp_path)))


def test_standalone_postprocessor_puts_outcome_on_nodes(tmp_path: Path) -> None:
    """The LlamaIndex way, no engine: nine image nodes, a scripted VLM, postprocess_nodes."""
    nodes = [
        NodeWithScore(node=ImageNode(image_path=str(p)), score=1 - i / 10)
        for i, p in enumerate(_images(tmp_path))
    ]
    vlm = FakeVLM(["a dark rectangle", '{"ranking": [9,1,2,3,4,5,6,7,8], "reason": "r"}'])
    out = rag.VLMReranker(vlm=vlm).postprocess_nodes(
        nodes,
        query_bundle=QueryBundle(query_str="like this", image_path=str(_query_file(tmp_path))),
    )
    assert [n.node.image_path for n in out][:2] == [
        nodes[8].node.image_path,
        nodes[0].node.image_path,
    ]
    assert {n.node.metadata["rerank_status"] for n in out} == {"ok"}
    assert {n.node.metadata["rerank_detail"] for n in out} == {""}
    # a reply the parser has to repair says so on the nodes too
    vlm = FakeVLM(["cap", "[2, 2, 1]"])
    out = rag.VLMReranker(vlm=vlm, with_reason=False).postprocess_nodes(
        nodes[:3], query_bundle=QueryBundle(query_str="x", image_path=str(_query_file(tmp_path)))
    )
    assert out[0].node.metadata["rerank_status"] == "repaired"
    assert "dropped duplicate 2" in out[0].node.metadata["rerank_detail"]


def test_rerank_returns_typed_outcome_with_exact_prompts_and_grid(tmp_path: Path) -> None:
    vlm = FakeVLM(["a dark rectangle", '{"ranking": [7,1,2,3,4,5,6,8,9], "reason": "spots"}'])
    outcome = VLMReranker(vlm=vlm).rerank(_nodes(tmp_path), _query(tmp_path))
    assert isinstance(outcome, rag.RerankOutcome)
    assert [n.node.node_id for n in outcome.nodes][:2] == ["n6", "n0"]
    assert (outcome.status, outcome.reason, outcome.caption) == ("ok", "spots", "a dark rectangle")
    assert set(outcome.timings) == {"caption_s", "grid_s", "generate_s"}
    assert outcome.tokens == {"prompt_tokens": 10, "new_tokens": 5}
    cap_prompt, cap_img, _ = vlm.calls[0]
    assert cap_prompt == load_prompt("caption").format()
    assert cap_img.size == (200, 150)
    rank_prompt, grid, _ = vlm.calls[1]
    assert rank_prompt == load_prompt("rerank").format(
        k=9, instruction="a phone case with this", caption="a dark rectangle"
    )
    assert 1200 <= grid.width <= 1300 and 900 <= grid.height <= 960
    # retrieval score/rank survive, the new order is visible
    top = outcome.nodes[0].node.metadata
    assert top["retrieval_rank"] == 7 and top["rerank_rank"] == 1
    assert outcome.nodes[0].score > outcome.nodes[1].score


def test_caption_asks_for_low_detail_ranking_and_reason_for_high(tmp_path: Path) -> None:
    """The backend-neutral `detail`: the caption needs one photo's gist, the grid every label."""
    vlm = FakeVLM(["cap", "[2,1,3]", "why"])
    outcome = VLMReranker(vlm=vlm).rerank(_nodes(tmp_path, 3), _query(tmp_path))
    assert (outcome.caption, outcome.reason) == ("cap", "why")
    assert vlm.calls[0][0] == load_prompt("caption").format()
    assert [c[2]["detail"] for c in vlm.calls] == ["low", "high", "high"]  # caption, rank, reason


def test_caption_cached_by_content(tmp_path: Path) -> None:
    vlm = FakeVLM(["cap", "[1,2,3,4,5,6,7,8,9]", "[1,2,3,4,5,6,7,8,9]", "why"])
    rr = VLMReranker(vlm=vlm, with_reason=False)
    bundle = _query(tmp_path)
    rr.rerank(_nodes(tmp_path), bundle)
    rr.rerank(_nodes(tmp_path), bundle)
    assert [c[0] for c in vlm.calls].count(load_prompt("caption").format()) == 1


def test_text_only_skips_caption(tmp_path: Path) -> None:
    vlm = FakeVLM(['{"ranking": [2,1,3], "reason": "r"}'])
    outcome = VLMReranker(vlm=vlm).rerank(_nodes(tmp_path, 3), QueryBundle(query_str="red shoes"))
    assert len(vlm.calls) == 1
    assert vlm.calls[0][0] == load_prompt("rerank_text").format(k=3, instruction="red shoes")
    assert outcome.caption is None and outcome.nodes[0].node.node_id == "n1"


def test_repaired_is_visible(tmp_path: Path) -> None:
    vlm = FakeVLM(["cap", '{"ranking": [7,1,2,3,4,5,6,8], "reason": "r"}'])
    outcome = VLMReranker(vlm=vlm).rerank(_nodes(tmp_path), _query(tmp_path))
    assert outcome.status == "repaired" and "appended 9" in outcome.detail
    assert len(outcome.nodes) == 9 and outcome.nodes[-1].node.node_id == "n8"


def test_vlm_failure_falls_back_or_raises(tmp_path: Path) -> None:
    vlm = FakeVLM(fail=TimeoutError("VLM took too long"))
    outcome = VLMReranker(vlm=vlm).rerank(_nodes(tmp_path), _query(tmp_path))
    assert [n.node.node_id for n in outcome.nodes] == [f"n{i}" for i in range(9)]
    assert outcome.status == "fallback" and "VLM took too long" in outcome.detail
    with pytest.raises(TimeoutError):
        VLMReranker(vlm=FakeVLM(fail=TimeoutError("x")), raise_on_failure=True).rerank(
            _nodes(tmp_path), _query(tmp_path)
        )


def test_unloadable_vlm_is_fallback_not_crash(tmp_path: Path) -> None:
    calls = []

    def factory():
        calls.append(1)
        raise ConfigError("opt in first")

    rr = VLMReranker(vlm_factory=factory)
    for _ in range(2):  # the load is not retried every query
        outcome = rr.rerank(_nodes(tmp_path, 3), _query(tmp_path))
        assert len(outcome.nodes) == 3 and outcome.status == "fallback"
        assert "VLM unavailable: opt in first" in outcome.detail
    assert calls == [1]


def test_lazy_vlm_loads_once_across_threads(tmp_path: Path) -> None:
    loads = []

    def factory():
        loads.append(1)
        time.sleep(0.2)  # a slow load: without the lock, every thread would start one
        return FakeVLM(["[1,2,3]"] * 8)

    rr = VLMReranker(vlm_factory=factory, with_reason=False)
    threads = [
        threading.Thread(target=rr.rerank, args=(_nodes(tmp_path, 3), QueryBundle(query_str="x")))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == [1]


def test_top_n(tmp_path: Path) -> None:
    vlm = FakeVLM(['{"ranking": [3,2,1], "reason": "r"}'])
    outcome = VLMReranker(vlm=vlm, top_n=2).rerank(_nodes(tmp_path, 3), QueryBundle(query_str="x"))
    assert [n.node.node_id for n in outcome.nodes] == ["n2", "n1"]


def test_multi_pass_maps_grid_positions_back(tmp_path: Path) -> None:
    preference = [COLORS[i] for i in (4, 2, 8, 0, 1, 3, 5, 6, 7)]
    rr = VLMReranker(vlm=ColorRankingVLM(preference), passes=4, seed=3)
    outcome = rr.rerank(_nodes(tmp_path), _query(tmp_path))
    assert [n.node.node_id for n in outcome.nodes] == [f"n{i}" for i in (4, 2, 8, 0, 1, 3, 5, 6, 7)]
    assert outcome.status == "ok" and "4 shuffled passes" in outcome.detail


def test_borda_aggregate() -> None:
    assert _aggregate([[1, 2, 3], [1, 3, 2], [2, 1, 3]], 3) == [1, 2, 3]
    assert _aggregate([[3, 2, 1], [2, 3, 1]], 3) == [2, 3, 1]  # tie -> retrieval order


def test_prompt_files_checked() -> None:
    with pytest.raises(ValueError, match="must use variables"):
        load_prompt("rerank", "Rank {k} items for {instruction}")
    rr = VLMReranker(vlm=FakeVLM())
    assert set(rr.get_prompts()) == {"caption", "rerank", "rerank_text", "reason"}


# -- the real generation path on a tiny random Qwen2-VL ------------------------------------
class _Spy(VLMBackend):
    """Passes calls through to a real backend and keeps its replies."""

    def __init__(self, inner):
        self.inner, self.replies = inner, []
        self.supports_constrained = inner.supports_constrained
        self.supports_first_token = inner.supports_first_token

    def generate(self, prompt, image, **kwargs):
        reply = self.inner.generate(prompt, image, **kwargs)
        self.replies.append(reply.text)
        return reply


def test_hf_backend_unconstrained_outcome_follows_the_parser(tiny_vlm, tmp_path: Path) -> None:
    """Free generation on random weights says anything; the outcome must be exactly what the
    guardrailed parser makes of the reply the model really gave."""
    spy = _Spy(tiny_vlm)
    rr = VLMReranker(vlm=spy, constrained=False, max_new_tokens=24, with_reason=False)
    nodes = _nodes(tmp_path)
    outcome = rr.rerank(nodes, _query(tmp_path))
    expected = parse_ranking(spy.replies[-1], 9)
    assert (outcome.status, outcome.detail) == (expected.status, expected.detail)
    assert [n.node.node_id for n in outcome.nodes] == [f"n{i - 1}" for i in expected.ranking]
    assert outcome.tokens["prompt_tokens"] > 100  # the image tokens are in the prompt


def test_hf_backend_constrained_is_a_valid_permutation(tiny_vlm, tmp_path: Path) -> None:
    for k in (9, 5, 2):
        reply = tiny_vlm.generate("Rank them.", Image.new("RGB", (300, 300)), permutation_of=k)
        nums = [int(x) for x in reply.text.split(",")]
        assert sorted(nums) == list(range(1, k + 1)), reply.text
    rr = VLMReranker(vlm=tiny_vlm, with_reason=True)
    outcome = rr.rerank(_nodes(tmp_path), _query(tmp_path))
    assert outcome.status == "ok" and len(outcome.nodes) == 9
    assert {"generate_s", "caption_s", "reason_s"} <= set(outcome.timings)


def test_hf_backend_first_token_mode(tiny_vlm, tmp_path: Path) -> None:
    rr = VLMReranker(vlm=tiny_vlm, strategy="first-token")
    outcome = rr.rerank(_nodes(tmp_path), _query(tmp_path))
    assert outcome.status == "ok" and "first-token" in outcome.detail
    scores = tiny_vlm.candidate_scores(
        "Rank them.", outcome.nodes and Image.new("RGB", (300, 300)), 9
    )
    assert len(scores) == 9 and len(outcome.nodes) == 9


def test_engine_with_reranker_end_to_end(catalog, tiny_embedding, tiny_vlm) -> None:
    store, folder, _ = catalog
    engine = build_query_engine(
        Settings(), embedding=tiny_embedding, store=store, reranker=VLMReranker(vlm=tiny_vlm)
    )
    res = engine.search(text="a phone case with this", image=folder / "img_001.png")
    assert res.rerank["status"] == "ok" and len(res.results) == 9
    assert sorted(r["retrieval_rank"] for r in res.results) == list(range(1, 10))
    assert res.caption is not None
    off = engine.search(text="x", rerank=False)
    assert off.rerank == {"status": "skipped", "detail": "rerank disabled"}


def test_default_settings_degrade_visibly(catalog, tiny_embedding) -> None:
    store, _, _ = catalog
    engine = build_query_engine(Settings(), embedding=tiny_embedding, store=store)
    res = engine.search(text="red")
    assert len(res.results) == 9 and res.rerank["status"] == "skipped"
    assert "MMSEARCH_VLM_TRUST_REMOTE_CODE=true" in res.rerank["detail"]
    assert "MMSEARCH_VLM_REVISION" not in res.rerank["detail"]  # the default model is pinned
    # another model, opted in but not pinned: still skipped, the detail names what is missing
    opted = Settings(vlm_trust_remote_code=True, vlm_model="microsoft/Phi-3-vision-128k-instruct")
    res = build_query_engine(opted, embedding=tiny_embedding, store=store).search(text="red")
    assert res.rerank["status"] == "skipped"
    assert "MMSEARCH_VLM_REVISION" in res.rerank["detail"]
    assert "MMSEARCH_VLM_TRUST_REMOTE_CODE" not in res.rerank["detail"]
    with pytest.raises(ConfigError, match="MMSEARCH_VLM_REVISION"):
        rag.build_reranker(opted)
    # a configured VLM that cannot load degrades to fallback (retrieval order, scores kept)
    hf = Settings(vlm_backend="hf", vlm_model=str(Path("/nonexistent/vlm")))
    res = build_query_engine(hf, embedding=tiny_embedding, store=store).search(text="red")
    assert res.rerank["status"] == "fallback" and "cannot load the VLM" in res.rerank["detail"]
    assert [r["retrieval_rank"] for r in res.results] == list(range(1, 10))
    assert all(r["score"] == r["retrieval_score"] for r in res.results)


# -- phi3v specifics ----------------------------------------------------------------------
def test_phi3v_needs_opt_in_and_pinned_revision() -> None:
    with pytest.raises(ConfigError, match="opt in"):
        Phi3VisionVLM.from_pretrained("microsoft/Phi-3.5-vision-instruct")
    with pytest.raises(ConfigError, match="pinned revision"):
        Phi3VisionVLM.from_pretrained(
            "microsoft/Phi-3.5-vision-instruct", trust_remote_code=True, revision="main"
        )


def test_dynamic_cache_patch() -> None:
    import torch
    from transformers import DynamicCache

    patch_dynamic_cache()
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4), 0)
    assert cache.get_max_length() is None
    assert cache.seen_tokens == 5 and cache.get_usable_length(3, 0) == 5


# -- openai backend against a loopback server ------------------------------------------------
class _FakeOpenAI(BaseHTTPRequestHandler):
    requests: list[dict] = []
    replies: list[tuple[int, dict]] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"body": body, "auth": self.headers.get("Authorization")})
        status, payload = type(self).replies.pop(0)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def _chat(content: str) -> dict:
    return {
        "choices": [{"message": {"content": content}}],
        "usage": {"prompt_tokens": 2500, "completion_tokens": 30},
    }


def test_openai_backend(tmp_path: Path) -> None:
    from pydantic import SecretStr

    _FakeOpenAI.requests, _FakeOpenAI.replies = (
        [],
        [
            (200, _chat("a leopard face")),
            (400, {"error": "unknown field structured_outputs"}),
            (200, _chat('{"ranking": [3,1,2], "reason": "spots"}')),
        ],
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        vlm = OpenAIVLM(
            base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
            model="phi-3.5-vision",
            api_key=SecretStr("sk-secret"),
            retries=1,
        )
        assert "sk-secret" not in repr(vlm)
        outcome = VLMReranker(vlm=vlm).rerank(_nodes(tmp_path, 3), _query(tmp_path))
        assert [n.node.node_id for n in outcome.nodes] == ["n2", "n0", "n1"]
        assert outcome.status == "ok" and outcome.caption == "a leopard face"
        reqs = _FakeOpenAI.requests
        assert reqs[0]["auth"] == "Bearer sk-secret"
        parts = reqs[1]["body"]["messages"][0]["content"]
        assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
        assert "structured_outputs" in reqs[1]["body"]
        assert "structured_outputs" not in reqs[2]["body"]  # retried without it
        assert outcome.tokens == {"prompt_tokens": 2500, "new_tokens": 30}
    finally:
        server.shutdown()
    unreachable = OpenAIVLM(base_url="http://127.0.0.1:1/v1", model="m", retries=0)
    outcome = VLMReranker(vlm=unreachable).rerank(_nodes(tmp_path, 2), QueryBundle(query_str="x"))
    assert outcome.status == "fallback" and "unreachable" in outcome.detail


def test_prompts_exposed_through_engine(catalog, tiny_embedding) -> None:
    store, _, _ = catalog
    engine = build_query_engine(
        Settings(), embedding=tiny_embedding, store=store, reranker=VLMReranker(vlm=FakeVLM())
    )
    prompts = engine.get_prompts()
    assert "reranker:rerank" in prompts
    engine.update_prompts({"reranker:caption": "Name the colour of this picture."})
    vlm = engine.reranker.vlm
    vlm.replies = ["grey", "[1,2,3,4,5,6,7,8,9]", "because"]
    res = engine.search(text="like this", image=make_image(3))
    assert res.caption == "grey"
    assert vlm.calls[0][0] == "Name the colour of this picture."  # the update took effect
    with pytest.raises(ValueError, match="must use variables"):
        engine.update_prompts({"reranker:rerank": "Rank {k} things."})
