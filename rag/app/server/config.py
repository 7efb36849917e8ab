"""What the HTTP server needs to know besides the engine: plain values, built from `Settings`
once by the CLI (or directly by tests), and the bind-address rule for the API key."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from rag.errors import ConfigError

if TYPE_CHECKING:
    from rag.core.settings import Settings

MB = 1024 * 1024


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` only listens on this machine (127.0.0.0/8, ::1, localhost).

    Any other name counts as non-loopback: a name that resolves elsewhere later must not
    silently expose an unauthenticated API.
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: SecretStr | None) -> None:
    """Refuse to serve on a non-loopback address without an API key.

    Raises:
        ConfigError: ``host`` is not loopback and no key is set.
    """
    if not is_loopback_host(host) and not (api_key and api_key.get_secret_value()):
        raise ConfigError(
            f"binding {host} exposes the API beyond this machine: set MMSEARCH_API_KEY "
            "(required for all of /api on such an address), or bind 127.0.0.1"
        )


@dataclass(frozen=True)
class ServerConfig:
    """The server's knobs.

    Attributes:
        api_key: required for /api/ingest, and for all of /api when ``key_for_all_api``;
            ``None`` disables ingest over HTTP.
        key_for_all_api: every /api request needs the key (a non-loopback bind).
        max_upload_bytes: cap on any request body (uploads, catalogs, JSON).
        cors_origins: origins allowed by CORS; empty = no CORS headers at all.
        allow_private_urls: ``image_url`` may point at private/loopback/link-local addresses.
        url_timeout_s: timeout for fetching an ``image_url``.
        thumb_dir: where thumbnails are cached.
        thumb_px: longest side of a thumbnail.
        search_threads: threads that run blocking engine calls (model calls are serialised
            by the models' own locks; more threads overlap decoding, Milvus and HTTP).
        max_top_k: the largest ``top_k`` a request may ask for.
    """

    api_key: SecretStr | None = None
    key_for_all_api: bool = False
    max_upload_bytes: int = 20 * MB
    cors_origins: tuple[str, ...] = ()
    allow_private_urls: bool = False
    url_timeout_s: float = 10.0
    thumb_dir: Path = field(default_factory=lambda: Path("./data/cache/thumbs"))
    thumb_px: int = 256
    search_threads: int = 4
    max_top_k: int = 100

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise ConfigError(f"max_upload_bytes must be > 0, got {self.max_upload_bytes}")
        if self.key_for_all_api and not self.key:
            raise ConfigError("key_for_all_api needs an api_key")
        if self.search_threads < 1:
            raise ConfigError(f"search_threads must be > 0, got {self.search_threads}")

    @property
    def key(self) -> str | None:
        """The key as plain text (``None`` when unset or empty)."""
        value = self.api_key.get_secret_value() if self.api_key else ""
        return value or None

    @classmethod
    def from_settings(cls, settings: Settings, *, host: str) -> ServerConfig:
        """The configuration for serving on ``host`` (checked with :func:`check_bind`)."""
        check_bind(host, settings.api_key)
        origins = tuple(o.strip() for o in settings.cors_origins.split(",") if o.strip())
        return cls(
            api_key=settings.api_key,
            key_for_all_api=not is_loopback_host(host),
            max_upload_bytes=int(settings.max_upload_mb * MB),
            cors_origins=origins,
            allow_private_urls=settings.allow_private_urls,
            thumb_dir=settings.data_dir / "cache" / "thumbs",
        )
