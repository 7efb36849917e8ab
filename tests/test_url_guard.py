"""The SSRF guard of rag/core/fetch.py: every resolved address checked, every redirect hop
checked, the connection pinned to the checked address; the opt-out for intranet catalogs."""

from __future__ import annotations

import http.server
import io
import ipaddress
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from rag.core import fetch as fetch_mod
from rag.core.fetch import address_problem, fetch, fetch_bytes
from rag.errors import URLNotAllowedError
from tests.helpers import make_image


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("192.0.2.1", "private"),  # documentation range (Python counts it as private)
        ("8.8.8.8", None),
        ("151.101.1.69", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_classes(address: str, problem: str | None) -> None:
    assert address_problem(ipaddress.ip_address(address)) == problem


class _Handler(http.server.BaseHTTPRequestHandler):
    png = b""
    hits: list[tuple[str, str]] = []
    redirect_to = ""

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits.append((self.path, self.headers.get("Host", "")))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", type(self).redirect_to)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.png)))
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _server(host: str) -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {"hits": []})
    buf = io.BytesIO()
    make_image(3).save(buf, format="PNG")
    handler.png = buf.getvalue()
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def only_127_0_0_1_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend 127.0.0.1 is a public address (every test server is on loopback); 127.0.0.2
    and everything else keep their real class."""
    real = fetch_mod.address_problem

    def problem(ip: Any) -> str | None:
        return None if str(ip) == "127.0.0.1" else real(ip)

    monkeypatch.setattr(fetch_mod, "address_problem", problem)


def test_loopback_refused_unless_opted_in(tmp_path: Any) -> None:
    with _server("127.0.0.1") as (base, handler):
        for url in (f"{base}/a.png", base.replace("127.0.0.1", "localhost") + "/a.png"):
            with pytest.raises(URLNotAllowedError, match="loopback.*MMSEARCH_ALLOW_PRIVATE_URLS"):
                fetch(url, tmp_path / "cache")
            with pytest.raises(URLNotAllowedError):
                fetch_bytes(url)
        assert handler.hits == []  # refused before any connection
        assert fetch_bytes(f"{base}/a.png", allow_private=True) == handler.png
        assert (
            fetch(f"{base}/a.png", tmp_path / "c", allow_private=True).read_bytes() == handler.png
        )


def test_every_redirect_hop_is_checked(only_127_0_0_1_public: None) -> None:
    with _server("127.0.0.2") as (inner, inner_handler), _server("127.0.0.1") as (outer, handler):
        handler.redirect_to = f"{inner}/secret.png"
        assert fetch_bytes(f"{outer}/a.png") == handler.png  # the "public" host itself is fine
        with pytest.raises(URLNotAllowedError, match="redirected to .*127.0.0.2.*loopback"):
            fetch_bytes(f"{outer}/redirect")
        assert inner_handler.hits == []  # the private hop was never contacted
        # The opt-out follows the same chain to the end.
        assert fetch_bytes(f"{outer}/redirect", allow_private=True) == inner_handler.png
        assert [p for p, _ in inner_handler.hits] == ["/secret.png"]


def test_the_connection_goes_to_the_checked_address(
    only_127_0_0_1_public: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name is resolved once, by the guard; the request goes to that address with the
    original Host header (a second DNS answer could not redirect it)."""
    real_resolve = fetch_mod.resolve
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[Any]:
        asked.append(host)
        if host == "shop.example":  # not resolvable for real: only the guard's answer counts
            return [ipaddress.ip_address("127.0.0.1")]
        return real_resolve(host, port)

    monkeypatch.setattr(fetch_mod, "resolve", resolve)
    with _server("127.0.0.1") as (base, handler):
        port = base.rsplit(":", 1)[1]
        assert fetch_bytes(f"http://shop.example:{port}/p.png") == handler.png
        assert handler.hits == [("/p.png", f"shop.example:{port}")]
        assert asked == ["shop.example"]


def test_chat_url_attach_is_guarded(tmp_path: Any) -> None:
    from rag.app.chat import ChatSession

    with _server("127.0.0.1") as (base, handler):
        out = io.StringIO()
        session = ChatSession(engine=None, out=out, grid_dir=tmp_path)
        session.handle(f"/image {base}/q.png")
        assert "refused" in out.getvalue() and "loopback" in out.getvalue()
        assert session.state.image is None and handler.hits == []
        trusting = ChatSession(
            engine=None, out=io.StringIO(), grid_dir=tmp_path, allow_private_urls=True
        )
        trusting.handle(f"/image {base}/q.png")
        assert trusting.state.image is not None
