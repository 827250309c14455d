"""A rate-limited logging filter for loggers we do not call ourselves (asyncio's accept
errors, uvicorn's protocol warnings): an outsider can make them write one line per
connection, so a flood would fill the disk (the probe of issue 17: 267,393 lines in 25 s).

Our own multiplied lines go through ``core.logs.LogBudget``; this is the same idea as a
``logging.Filter``, which is the only hook a library's logger offers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimitFilter", "rate_limit"]

_MAX_KEYS = 256  # distinct message templates tracked; a flood has one or two


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
        self._rate, self._burst, self._clock = rate_per_s, float(burst), clock
        self._buckets: dict[tuple[str, str], tuple[float, float, int]] = {}  # tokens, at, dropped
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        # The first words only: asyncio's lines carry handles and addresses that vary.
        key = (record.name, str(record.msg).split("\n", 1)[0][:40])
        with self._lock:
            now = self._clock()
            tokens, at, dropped = self._buckets.get(key, (self._burst, now, 0))
            tokens = min(self._burst, tokens + (now - at) * self._rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now, dropped + 1)
                return False
            if len(self._buckets) >= _MAX_KEYS and key not in self._buckets:
                self._buckets.clear()  # many templates at once: start over rather than grow
            self._buckets[key] = (tokens - 1.0, now, 0)
        if dropped:
            record.suppressed = dropped
        return True

    def report(self, logger: logging.Logger) -> int:
        """Log one line with what was dropped since it was last told; returns that count."""
        with self._lock:
            dropped = {f"{name}: {msg}"[:120]: n for (name, msg), (_t, _a, n) in self._buckets.items() if n}
            for key, (tokens, at, n) in list(self._buckets.items()):
                if n:
                    self._buckets[key] = (tokens, at, 0)
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
