"""Structured JSON-lines logging.

Loggers receive codes, counts, ids of our own rows and peers, never message content or
identifiers: PHI logging is not offered at all in the skeleton (a later opt-in flag must
say so in its help text, as Google's MLLP adapter does). Lines an outsider can multiply
(one per connection or refusal) go through a ``LogBudget``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from core.ratelimit import TokenBucket

__all__ = ["JsonLinesFormatter", "LogBudget", "configure_logging"]

_STANDARD = set(logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__) | {"message", "asctime"}


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            payload["error_type"] = record.exc_info[0].__name__
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", stream: TextIO | None = None, file: Path | None = None) -> None:
    """JSON lines to ``stream`` (default stderr), or appended to ``file``. Python warnings
    (a library's ``warnings.warn``) become log lines too, rather than bare text on stderr."""
    handler: logging.Handler
    if file is not None:
        handler = logging.FileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLinesFormatter())
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries' chatter at INFO is noise in an operator's log (pika logs every connect).
    for noisy in ("pika", "amqp", "kombu", "celery", "alembic", "sqlalchemy", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class LogBudget:
    """A token bucket for the log lines an outsider can multiply (one per connection or
    refusal): at most ``burst`` at once and ``rate_per_s`` after that, whatever the rate of
    what causes them. What it leaves out is counted per ``event`` and told in one
    ``log.suppressed`` line at most every ``report_every_s`` (and on ``report()``), so a
    flood shows in the log as a count instead of filling the disk. Thread-safe.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        rate_per_s: float = 5.0,
        burst: int = 50,
        report_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._bucket = TokenBucket(rate_per_s, burst, clock)
        self._report_every_s = report_every_s
        self._clock = clock
        self._last_report = clock()
        self._suppressed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def info(self, msg: str, *, event: str, **fields: object) -> None:
        self.log(logging.INFO, msg, event=event, **fields)

    def warning(self, msg: str, *, event: str, **fields: object) -> None:
        self.log(logging.WARNING, msg, event=event, **fields)

    def log(self, level: int, msg: str, *, event: str, **fields: object) -> None:
        if not self._logger.isEnabledFor(level):
            return  # a line nobody would see costs no token
        with self._lock:
            allowed = self._bucket.take()
            if not allowed:
                self._suppressed[event] += 1
            due = self._take_due(self._clock())
        if due:
            self._tell(due)
        if allowed:
            self._logger.log(level, msg, extra={"event": event, **fields})

    def report(self, *, force: bool = True) -> None:
        """Log what was left out since the last report (``force``: even if not yet due)."""
        with self._lock:
            due = self._take_due(self._clock(), force=force)
        if due:
            self._tell(due)

    def _take_due(self, now: float, *, force: bool = False) -> dict[str, int]:
        if not self._suppressed or (not force and now - self._last_report < self._report_every_s):
            return {}
        due, self._suppressed = dict(self._suppressed), Counter()
        self._last_report = now
        return due

    def _tell(self, suppressed: dict[str, int]) -> None:
        self._logger.warning(
            "log lines suppressed",
            extra={"event": "log.suppressed", "suppressed": suppressed, "lines": sum(suppressed.values())},
        )
