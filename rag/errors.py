"""The product's exception types: one base class whose message is written for the user."""

from __future__ import annotations


class MMSearchError(Exception):
    """An error the user can act on; ``str(err)`` is a complete one-line explanation.

    The CLI prints it without a traceback and exits non-zero.
    """


class ConfigError(MMSearchError):
    """A setting or argument has a value we cannot use."""


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


class EmptyQueryError(MMSearchError):
    """A query with neither text nor image."""


class EmptyCollectionError(MMSearchError):
    """A search against a collection that holds no rows."""


class DownloadError(MMSearchError):
    """A model or data set could not be downloaded (offline, wrong checksum, ...)."""
