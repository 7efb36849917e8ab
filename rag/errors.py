"""Every exception the product raises on purpose: one base class whose message is for the user.

The CLI, the chat loop and the HTTP server print ``str(err)`` as one line; nothing here
carries a traceback to the user.
"""

from __future__ import annotations


class MMSearchError(Exception):
    """An error the user can act on; ``str(err)`` is a complete one-line explanation.

    The CLI prints it without a traceback and exits non-zero.
    """


class ConfigError(MMSearchError, ValueError):
    """A setting or argument has a value we cannot use.

    Also a ``ValueError``, so code written against the usual Python convention for bad
    arguments catches it too.
    """


class StoreError(MMSearchError):
    """Milvus could not be reached, opened or used."""


class StoreLockedError(StoreError):
    """Another process holds the Milvus Lite data directory."""


class StoreMismatchError(StoreError):
    """The collection was built with another embedding model or dimension."""


class ModelLoadError(MMSearchError):
    """A model directory or checkpoint is missing, truncated or of the wrong kind."""


class InputImageError(MMSearchError):
    """An image given by the user cannot be read."""


class URLNotAllowedError(InputImageError):
    """A URL points at an address the fetcher refuses (private, loopback, link-local: SSRF)."""


class PayloadTooLargeError(MMSearchError):
    """A request body or upload is over the server's size cap."""


class AuthError(MMSearchError):
    """A request lacks the API key, or carries a wrong one."""


class NotFoundError(MMSearchError):
    """A row, image or job asked for by id does not exist."""


class EmptyQueryError(MMSearchError):
    """A query with neither text nor image."""


class EmptyCollectionError(MMSearchError):
    """A search against a collection that holds no rows."""


class DownloadError(MMSearchError):
    """A model or data set could not be downloaded (offline, wrong checksum, ...)."""


class VLMError(MMSearchError):
    """A VLM call failed (endpoint down, timeout, generation error)."""


class SourceError(MMSearchError):
    """A source path or catalog file cannot be used at all."""


class EvalInputError(MMSearchError):
    """An evaluation query file (or one of its rows) cannot be read."""


class DistributedError(MMSearchError):
    """Ray is missing, cannot be reached, or a distributed stage failed."""
