import io
from pathlib import Path

from rag.app.chat import run_chat
from rag.core.settings import Settings
from rag.factory import build_query_engine
from tests.conftest import run_cli


class _Spy:
    """Wraps the real engine and records every search call."""

    def __init__(self, engine):
        self.engine = engine
        self.calls: list[dict] = []

    def search(self, **kw):
        self.calls.append(kw)
        return self.engine.search(**kw)

    def close(self):
        self.engine.close()


def _chat(engine, lines: list[str]) -> str:
    out = io.StringIO()
    run_chat(engine, io.StringIO("\n".join(lines) + "\n"), out)
    return out.getvalue()


def test_scripted_conversation(catalog, tiny_embedding, tmp_path: Path) -> None:
    store, folder, _ = catalog
    spy = _Spy(build_query_engine(Settings(rerank=False), embedding=tiny_embedding, store=store))
    grid_out = tmp_path / "g.png"
    text = _chat(
        spy,
        [
            "red shoes",  # text turn
            f"/image {folder / 'img_002.png'}",  # attach
            "a phone case with this",  # composed turn
            "like #3 but in red",  # refinement with result 3
            "/image /no/such/file.png",  # bad turn
            "/k 4",
            "/filter category=cases",
            "cheaper",
            "/k zero",  # bad turn
            "#99 please",  # out of range
            f"/grid {grid_out}",
            "/open 1",
            "/help",
            "/quit",
            "never reached",
        ],
    )
    assert [c["text"] for c in spy.calls] == [
        "red shoes",
        "a phone case with this",
        "like this but in red",
        "cheaper",
    ]
    assert spy.calls[0]["image"] is None
    assert spy.calls[1]["image"] == str(folder / "img_002.png")
    # the #3 turn used a result of the previous search as its query image
    assert spy.calls[2]["image"].endswith(".png") and spy.calls[2]["image"] != spy.calls[1]["image"]
    assert spy.calls[3]["top_k"] == 4 and spy.calls[3]["filters"] == ["category=cases"]
    assert "error: /no/such/file.png: no such file" in text
    assert "error: usage: /k N" in text and "#99 is out of range" in text
    assert grid_out.is_file() and "grid saved to" in text
    assert "bye" in text and "never reached" not in str(spy.calls)
    assert text.count("rerank skipped: rerank disabled") == 1  # said once, not every turn


def test_ref_uses_result_image(catalog, tiny_embedding) -> None:
    store, folder, _ = catalog
    spy = _Spy(build_query_engine(Settings(rerank=False), embedding=tiny_embedding, store=store))
    out = io.StringIO()
    from rag.app.chat import ChatSession

    session = ChatSession(spy, out)
    session.handle("anything")
    expected = session.state.last.nodes[2].node.metadata["image_path"]
    session.handle("like #3 but in red")
    assert spy.calls[-1]["image"] == expected and spy.calls[-1]["text"] == "like this but in red"


def test_eof_and_empty_lines_end_cleanly(catalog, tiny_embedding) -> None:
    store, _, _ = catalog
    engine = build_query_engine(Settings(rerank=False), embedding=tiny_embedding, store=store)
    text = _chat(engine, ["", "   "])
    assert text.rstrip().endswith("bye")


def test_cli_chat(catalog, tiny_embed_dir, milvus_uri) -> None:
    store, folder, _ = catalog
    store.close()
    env = {"MMSEARCH_MILVUS_URI": milvus_uri, "MMSEARCH_EMBED_MODEL": str(tiny_embed_dir)}
    res = run_cli("chat", input=f"/image {folder / 'img_001.png'}\nsimilar\n/quit\n", env=env)
    assert res.returncode == 0, res.stderr
    assert "Product 1" in res.stdout and "bye" in res.stdout
