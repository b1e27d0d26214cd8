"""Retry policy as small named functions (after openai-python), the randomness injectable."""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Mapping

RETRYABLE_STATUSES = frozenset({408, 409, 429})
INITIAL_DELAY = 0.5
MAX_BACKOFF = 8.0


def should_retry(status: int, headers: Mapping[str, str]) -> bool:
    """Whether an HTTP error status is worth another attempt."""
    # The service may say so itself (openai-python honours x-should-retry).
    directive = (headers.get("x-should-retry") or "").lower()
    if directive == "true":
        return True
    if directive == "false":
        return False
    return status in RETRYABLE_STATUSES or status >= 500


def server_retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """The delay the service asked for, in seconds: retry-after-ms first, then retry-after (seconds or HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(raw)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - now())


def backoff_delay(retries_done: int, rng: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff with jitter: min(0.5·2^n, 8) × (1 − 0.25·U[0,1))."""
    delay = min(INITIAL_DELAY * (2**retries_done), MAX_BACKOFF)
    return delay * (1 - 0.25 * rng())
