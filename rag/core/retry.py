"""One retry loop with capped exponential backoff, for calls over the network."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Retry(Exception):
    """Raised inside an attempt to ask for another one; ``error`` is raised if none is left."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def backoff_s(attempt: int, *, base_s: float = 0.5, cap_s: float = 4.0) -> float:
    """Seconds to wait before ``attempt`` (1-based retries): 1, 2, 4, ... capped."""
    return min(base_s * 2**attempt, cap_s)


def with_retries(
    attempt: Callable[[], T],
    *,
    retries: int,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``attempt`` until it returns; it raises :class:`Retry` for a transient failure.

    After ``retries`` extra attempts the last ``Retry.error`` is raised (chained to its cause).
    Any other exception propagates at once.
    """
    if retries < 0:
        from rag.errors import ConfigError

        raise ConfigError(f"retries must be >= 0, got {retries}")
    last: Retry | None = None
    for n in range(retries + 1):
        if n:
            sleep(backoff_s(n))
        try:
            return attempt()
        except Retry as r:
            logger.debug("attempt %d failed: %s", n + 1, r.error)
            last = r
    assert last is not None
    raise last.error
