"""A rate-limited logging filter for loggers we do not call ourselves (asyncio's accept
errors, uvicorn's protocol warnings): an outsider can make them write one line per
connection, so a flood would fill the disk (the probe of issue 17: 267,393 lines in 25 s).

Our own multiplied lines go through ``core.logs.LogBudget``; this is the same idea as a
``logging.Filter``, which is the only hook a library's logger offers. Both draw on
``TokenBucket``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimitFilter", "TokenBucket", "rate_limit"]

_MAX_KEYS = 256  # distinct message templates tracked; a flood has one or two


class TokenBucket:
    """At most ``burst`` at once, then ``rate_per_s``: ``take()`` says whether one more may
    go now. Not locked: its owner holds its own lock."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("rate_per_s and burst must be positive")
        self._rate, self._burst, self._clock = rate_per_s, float(burst), clock
        self._tokens, self._at = float(burst), clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class RateLimitFilter(logging.Filter):
    """Per message template: at most ``burst`` records at once, then ``rate_per_s``. What
    it drops is counted and told on the next record it lets through (field
    ``suppressed``), or by ``report()``."""

    def __init__(
        self, *, rate_per_s: float = 1.0, burst: int = 5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("rate_per_s and burst must be positive")
        self._rate, self._burst, self._clock = rate_per_s, burst, clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._dropped: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        # The first words only: asyncio's lines carry handles and addresses that vary.
        key = (record.name, str(record.msg).split("\n", 1)[0][:40])
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= _MAX_KEYS:
                    # Many templates at once: start over rather than grow.
                    self._buckets.clear()
                    self._dropped.clear()
                bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, self._clock)
            if not bucket.take():
                self._dropped[key] = self._dropped.get(key, 0) + 1
                return False
            dropped = self._dropped.pop(key, 0)
        if dropped:
            record.suppressed = dropped
        return True

    def report(self, logger: logging.Logger) -> int:
        """Log one line with what was dropped since it was last told; returns that count."""
        with self._lock:
            dropped = {f"{name}: {msg}"[:120]: n for (name, msg), n in self._dropped.items() if n}
            self._dropped.clear()
        if dropped:
            logger.warning(
                "log lines suppressed", extra={"suppressed": dropped, "lines": sum(dropped.values())}
            )
        return sum(dropped.values())


def rate_limit(logger: logging.Logger, *, rate_per_s: float = 1.0, burst: int = 5) -> RateLimitFilter:
    """The logger's RateLimitFilter, added once however often this is called."""
    for existing in logger.filters:
        if isinstance(existing, RateLimitFilter):
            return existing
    limiter = RateLimitFilter(rate_per_s=rate_per_s, burst=burst)
    logger.addFilter(limiter)
    return limiter
