"""When to try a call again, and how long to wait first: one policy for both clients.

Backoff is exponential with full jitter (a uniform draw from zero to the exponential bound,
capped), so many clients that failed together do not come back together. A server that says
``Retry-After`` is believed, up to the same cap.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from embedsvc.client._errors import ConnectionFailed, EmbedsvcError, RateLimited, Unavailable

log = logging.getLogger("embedsvc.client")


@dataclass
class RetryPolicy:
    """``retries`` more attempts after the first, waiting ``backoff * 2**attempt`` seconds at
    most (jittered) and never more than ``max_backoff``."""

    retries: int = 3
    backoff: float = 0.25
    max_backoff: float = 10.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must not be negative")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0 for the first)."""
        if retry_after is not None:
            return min(self.max_backoff, max(0.0, retry_after))
        return self.rng.uniform(0.0, min(self.max_backoff, self.backoff * 2.0 ** attempt))

    def wait_before_retry(self, error: EmbedsvcError, attempt: int, idempotent: bool) -> float | None:
        """Seconds to wait before trying again after ``error``, or None to give up and raise."""
        if attempt >= self.retries or not is_retryable(error, idempotent):
            return None
        return self.delay(attempt, getattr(error, "retry_after", None))


def is_retryable(error: EmbedsvcError, idempotent: bool) -> bool:
    """Connection failures, 429 and 503 are worth another try, but only when repeating the call
    cannot do something twice: an idempotent call, or a request that never left (the
    connection was not made, so the server has not seen it)."""
    if isinstance(error, ConnectionFailed) and not error.sent:
        return True
    return idempotent and isinstance(error, (ConnectionFailed, RateLimited, Unavailable))


def log_retry(method: str, path: str, attempt: int, policy: RetryPolicy, error: EmbedsvcError,
              wait: float) -> None:
    log.info("retrying %s %s in %.2f s (retry %d of %d): %s",
             method, path, wait, attempt + 1, policy.retries, error)
