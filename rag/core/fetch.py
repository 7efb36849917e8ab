"""Fetching images from http(s) URLs: time- and size-capped, retried, cached on disk.

Only http and https are fetched (redirects included); a response larger than ``max_bytes`` is
abandoned mid-stream; the cache file appears only once complete (written to a temp name, then
renamed), so a killed run never leaves a half image in the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from rag.core.retry import Retry, with_retries
from rag.errors import InputImageError

logger = logging.getLogger(__name__)

MAX_BYTES = 25 * 1024 * 1024
TIMEOUT_S = 20.0
RETRIES = 2
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def cache_path(url: str, cache_dir: Path) -> Path:
    return cache_dir / (hashlib.sha256(url.encode()).hexdigest() + ".img")


def _save_stream(resp: Any, url: str, target: Path, max_bytes: int) -> None:
    """Write the response body to ``target`` atomically, abandoning it past ``max_bytes``."""
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise InputImageError(f"{url}: too large ({int(declared):,} bytes > {max_bytes:,})")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    size = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise InputImageError(f"{url}: too large (> {max_bytes:,} bytes)")
                fh.write(chunk)
        if size == 0:
            raise InputImageError(f"{url}: empty response")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download_once(url: str, target: Path, timeout_s: float, max_bytes: int) -> None:
    """One GET; transient failures (timeouts, connection errors, 429/5xx) raise ``Retry``."""
    import httpx

    try:
        with (
            httpx.Client(follow_redirects=True, max_redirects=5, timeout=timeout_s) as client,
            client.stream("GET", url) as resp,
        ):
            if resp.url.scheme not in ("http", "https"):
                raise InputImageError(f"{url}: redirected to a non-http URL")
            if resp.status_code in _RETRY_STATUS:
                raise Retry(InputImageError(f"{url}: HTTP {resp.status_code}"))
            if resp.status_code != 200:
                raise InputImageError(f"{url}: HTTP {resp.status_code}")
            _save_stream(resp, url, target, max_bytes)
    except httpx.TimeoutException as e:
        err = InputImageError(f"{url}: timed out after {timeout_s:g}s")
        err.__cause__ = e
        raise Retry(err) from e
    except httpx.HTTPError as e:
        err = InputImageError(f"{url}: {type(e).__name__}: {str(e)[:200]}")
        err.__cause__ = e
        raise Retry(err) from e


def fetch(
    url: str,
    cache_dir: Path,
    *,
    timeout_s: float = TIMEOUT_S,
    max_bytes: int = MAX_BYTES,
    retries: int = RETRIES,
) -> Path:
    """Download ``url`` into the cache (or reuse it); returns the cached file's path.

    Raises:
        InputImageError: bad scheme, HTTP error, timeout, too large, or empty body.
    """
    if not url.startswith(("http://", "https://")):
        raise InputImageError(f"{url}: only http(s) URLs are fetched")
    target = cache_path(url, cache_dir)
    if target.exists() and target.stat().st_size > 0:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with_retries(lambda: _download_once(url, target, timeout_s, max_bytes), retries=retries)
    return target
