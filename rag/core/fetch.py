"""Fetching images from http(s) URLs: time- and size-capped, retried, cached on disk, and
guarded against server-side request forgery.

Only http and https are fetched; a response larger than ``max_bytes`` is abandoned
mid-stream; the cache file appears only once complete (written to a temp name, then renamed),
so a killed run never leaves a half image in the cache.

The SSRF guard (on unless ``allow_private=True``): every address the host resolves to must be
public (not private, loopback, link-local, shared, multicast or reserved), and the connection
goes to the address that was checked (the URL's host is kept for the Host header and TLS), so
a DNS answer that changes between check and connect cannot slip through. Redirects are
followed by hand, and every hop is checked the same way.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rag.core.retry import Retry, with_retries
from rag.errors import InputImageError, URLNotAllowedError

logger = logging.getLogger(__name__)

MAX_BYTES = 25 * 1024 * 1024
TIMEOUT_S = 20.0
RETRIES = 2
MAX_REDIRECTS = 5
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_REDIRECT_STATUS = {301, 302, 303, 307, 308}
OPT_OUT_HINT = "MMSEARCH_ALLOW_PRIVATE_URLS=true allows them, e.g. for an intranet catalog"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def cache_path(url: str, cache_dir: Path) -> Path:
    return cache_dir / (hashlib.sha256(url.encode()).hexdigest() + ".img")


# -- the SSRF guard -----------------------------------------------------------------------
def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be fetched from (``"loopback"``, ``"private"``, ...), or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1 (Python 3.11 does not say so)
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if not ip.is_global:  # shared (100.64/10), reserved, documentation, 6to4 relays, ...
        return "non-public"
    return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise InputImageError(f"cannot resolve host {host!r}: {e}") from e
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])  # drop a v6 scope id
        if address not in addresses:
            addresses.append(address)
    return addresses


def checked_address(url: Any, label: str) -> str:
    """The address to connect to for ``url`` (an ``httpx.URL``) after every address its host
    resolves to passed the guard.

    Raises:
        URLNotAllowedError: the host resolves to a refused address.
        InputImageError: the host does not resolve.
    """
    host = url.host
    if not host:
        raise InputImageError(f"{label}: URL has no host")
    addresses = resolve(host, url.port or (443 if url.scheme == "https" else 80))
    for address in addresses:
        problem = address_problem(address)
        if problem:
            shown = host if host == str(address) else f"{host} ({address})"
            raise URLNotAllowedError(
                f"{label}: refused: {shown} is a {problem} address (private, loopback and "
                f"link-local addresses are not fetched; {OPT_OUT_HINT})"
            )
    if not addresses:
        raise InputImageError(f"{label}: host {host!r} has no address")
    return str(addresses[0])


def check_url(url: str, *, allow_private: bool = False) -> None:
    """Refuse non-http(s) URLs and, unless ``allow_private``, hosts on refused addresses."""
    import httpx

    if not url.startswith(("http://", "https://")):
        raise InputImageError(f"{url}: only http(s) URLs are fetched")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as e:
        raise InputImageError(f"{url}: not a valid URL ({e})") from e
    if not allow_private:
        checked_address(parsed, url)


def _request(url: Any, allow_private: bool, label: str) -> tuple[Any, dict[str, Any]]:
    """The URL to send to and the request options: pinned to a checked address when guarded."""
    if allow_private:
        return url, {}
    address = checked_address(url, label)
    headers = {"Host": url.netloc.decode("ascii")}
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return url.copy_with(host=address), {"headers": headers, "extensions": extensions}


@contextmanager
def _open(client: Any, url: str, allow_private: bool) -> Iterator[Any]:
    """A streaming response for ``url`` after following redirects, each hop guarded."""
    import httpx

    target = httpx.URL(url)
    for _ in range(MAX_REDIRECTS + 1):
        if target.scheme not in ("http", "https"):
            raise InputImageError(f"{url}: redirected to a non-http URL")
        label = url if str(target) == url else f"{url}: redirected to {target}"
        send_url, options = _request(target, allow_private, label)
        request = client.build_request("GET", send_url, **options)
        resp = client.send(request, stream=True)
        if resp.status_code not in _REDIRECT_STATUS or "location" not in resp.headers:
            try:
                yield resp
            finally:
                resp.close()
            return
        resp.close()
        target = target.join(resp.headers["location"])
    raise InputImageError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _read_stream(resp: Any, url: str, max_bytes: int, write: Callable[[bytes], Any]) -> int:
    """Pass the body to ``write`` in chunks, abandoning it past ``max_bytes``; returns its size."""
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise InputImageError(f"{url}: too large ({int(declared):,} bytes > {max_bytes:,})")
    size = 0
    for chunk in resp.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise InputImageError(f"{url}: too large (> {max_bytes:,} bytes)")
        write(chunk)
    if size == 0:
        raise InputImageError(f"{url}: empty response")
    return size


def _get_once(
    url: str,
    write: Callable[[bytes], Any],
    *,
    timeout_s: float,
    max_bytes: int,
    allow_private: bool,
) -> None:
    """One GET into ``write``; transient failures (timeouts, connection errors, 429/5xx)
    raise ``Retry``."""
    import httpx

    try:
        with (
            httpx.Client(follow_redirects=False, timeout=timeout_s) as client,
            _open(client, url, allow_private) as resp,
        ):
            if resp.status_code in _RETRY_STATUS:
                raise Retry(InputImageError(f"{url}: HTTP {resp.status_code}"))
            if resp.status_code != 200:
                raise InputImageError(f"{url}: HTTP {resp.status_code}")
            _read_stream(resp, url, max_bytes, write)
    except httpx.TimeoutException as e:
        err = InputImageError(f"{url}: timed out after {timeout_s:g}s")
        err.__cause__ = e
        raise Retry(err) from e
    except httpx.HTTPError as e:
        err = InputImageError(f"{url}: {type(e).__name__}: {str(e)[:200]}")
        err.__cause__ = e
        raise Retry(err) from e


def _download_once(
    url: str, target: Path, timeout_s: float, max_bytes: int, allow_private: bool
) -> None:
    """One GET written atomically to ``target`` (a temp file renamed when complete)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as fh:
            _get_once(
                url, fh.write, timeout_s=timeout_s, max_bytes=max_bytes, allow_private=allow_private
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(
    url: str,
    cache_dir: Path,
    *,
    timeout_s: float = TIMEOUT_S,
    max_bytes: int = MAX_BYTES,
    retries: int = RETRIES,
    allow_private: bool = False,
) -> Path:
    """Download ``url`` into the cache (or reuse it); returns the cached file's path.

    Args:
        allow_private: also fetch from private, loopback and link-local addresses (the SSRF
            guard's opt-out, for intranet catalogs).

    Raises:
        URLNotAllowedError: the URL (or a redirect) points at a refused address.
        InputImageError: bad scheme, HTTP error, timeout, too large, or empty body.
    """
    check_url(url, allow_private=True)  # the scheme; the guard runs on every hop below
    target = cache_path(url, cache_dir)
    if target.exists() and target.stat().st_size > 0:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with_retries(
        lambda: _download_once(url, target, timeout_s, max_bytes, allow_private),
        retries=retries,
    )
    return target


def fetch_bytes(
    url: str,
    *,
    timeout_s: float = TIMEOUT_S,
    max_bytes: int = MAX_BYTES,
    retries: int = RETRIES,
    allow_private: bool = False,
) -> bytes:
    """Download ``url`` into memory (no cache, no temp file); same guard and limits as
    :func:`fetch`."""
    check_url(url, allow_private=True)

    def attempt() -> bytes:
        chunks: list[bytes] = []
        _get_once(
            url,
            chunks.append,
            timeout_s=timeout_s,
            max_bytes=max_bytes,
            allow_private=allow_private,
        )
        return b"".join(chunks)

    return with_retries(attempt, retries=retries)
