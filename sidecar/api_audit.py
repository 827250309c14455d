"""What the API refuses or fails, audited without identifiers: failed authentications
(aggregated per source, and throttled), requests that end in a 5xx, and the hashing of
request values (search values, unknown ids, peer addresses) before they reach an audit
entry or a log line.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import audit
from core.db import Database
from deid import Vault

__all__ = ["UNAUTHENTICATED", "AuthGuard", "ErrorAudit", "Redactor"]

log = logging.getLogger("sidecar.api.audit")

UNAUTHENTICATED = "api:unauthenticated"
_MAX_SOURCES = 10_000  # sources tracked; beyond, new ones share one bucket (an address spray)
_SHARED = "*"
_ENTRIES_PER_FLUSH = 20  # per-source entries per flush; the rest go into one "others" entry


class Redactor:
    """Request values as keyed hashes ("h:" and 16 hex digits): the same value gives the
    same reference, so an auditor sees repeated probing, but no one without the secret
    can test a guess. Domain-separated from the leak guard's tokens by a prefix."""

    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    def ref(self, value: str) -> str:
        return "h:" + self._vault.token("sidecar/api/request-value/v1\x00" + value)[:16]


@dataclass
class _Source:
    window_start: float
    failures: int = 0  # in the current window: what throttling counts
    pending_failures: int = 0  # not yet audited
    pending_throttled: int = 0
    last_audit: float | None = None


class AuthGuard:
    """Per source address: after ``max_failures`` failed authentications within
    ``window_s`` its requests are refused unchecked until the window ends. Failures are
    audited at once for the first of a source, then at most once per ``audit_interval_s``
    with their count (``flush`` writes what a quiet source still owes). Thread-safe: the
    API's endpoints run on a thread pool."""

    def __init__(
        self,
        db: Database,
        redactor: Redactor,
        *,
        max_failures: int,
        window_s: float,
        audit_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db, self._redactor, self._clock = db, redactor, clock
        self.max_failures, self.window_s, self.audit_interval_s = max_failures, window_s, audit_interval_s
        self._sources: dict[str, _Source] = {}
        self._lock = threading.Lock()

    def _key(self, source: str) -> str:
        if source in self._sources or len(self._sources) < _MAX_SOURCES:
            return source
        return _SHARED

    def retry_after(self, source: str) -> int:
        """Seconds the source must wait (0: not throttled; check its token)."""
        with self._lock:
            state = self._sources.get(self._key(source))
            if state is None or state.failures < self.max_failures:
                return 0
            left = state.window_start + self.window_s - self._clock()
            return math.ceil(left) if left > 0 else 0

    def failed(self, source: str, *, throttled: bool) -> None:
        """One failed authentication (``throttled``: refused without checking the token)."""
        with self._lock:
            now, key = self._clock(), self._key(source)
            state = self._sources.setdefault(key, _Source(window_start=now))
            if not throttled and now - state.window_start >= self.window_s:
                state.window_start, state.failures = now, 0
            if throttled:
                state.pending_throttled += 1
            else:
                state.failures += 1
                state.pending_failures += 1
            due = self._take_due(key, state, now)
        if due is not None:
            self._write([due])

    def flush(self, *, force: bool = False) -> int:
        """Audit the counts that are due (``force``: all of them, at shutdown); forget
        quiet sources. A round function for ``sidecar.loops.Loop``."""
        with self._lock:
            now = self._clock()
            due = [
                entry
                for key, state in self._sources.items()
                if (entry := self._take_due(key, state, now, force=force)) is not None
            ]
            for key, state in list(self._sources.items()):
                quiet = not state.pending_failures and not state.pending_throttled
                if quiet and now - state.window_start >= self.window_s:
                    del self._sources[key]
        if due:
            self._write(due)
        return 0  # nothing waits for an immediate second round

    def _take_due(
        self, key: str, state: _Source, now: float, *, force: bool = False
    ) -> tuple[str, int, int] | None:
        if not state.pending_failures and not state.pending_throttled:
            return None
        if not force and state.last_audit is not None and now - state.last_audit < self.audit_interval_s:
            return None
        due = (key, state.pending_failures, state.pending_throttled)
        state.pending_failures = state.pending_throttled = 0
        state.last_audit = now
        return due

    def _write(self, due: list[tuple[str, int, int]]) -> None:
        rows = [
            (f"source:{self._redactor.ref(key)}" if key != _SHARED else "source:many", f, t)
            for key, f, t in due
        ]
        if len(rows) > _ENTRIES_PER_FLUSH:
            rest = rows[_ENTRIES_PER_FLUSH - 1 :]
            rows = rows[: _ENTRIES_PER_FLUSH - 1]
            rows.append(("source:others", sum(r[1] for r in rest), sum(r[2] for r in rest)))
        try:
            with self._db.transaction() as session:
                for entity, failures, throttled in rows:
                    audit.append(
                        session,
                        actor=UNAUTHENTICATED,
                        action="api.auth",
                        entity=entity,
                        outcome=audit.Outcome.FAILURE,
                        detail={"failures": failures, "throttled": throttled},
                    )
        except Exception as exc:
            log.error("could not audit failed authentications", extra={"error_type": type(exc).__name__})
            return
        for entity, failures, throttled in rows:
            log.warning(
                "API authentication failed",
                extra={
                    "event": "api.auth_failed",
                    "source": entity,
                    "failures": failures,
                    "throttled": throttled,
                },
            )


class ErrorAudit:
    """ASGI middleware: a request that ends in a 5xx, or in an exception (answered 500
    here, so no traceback with data in its message reaches a log), is audited as a
    failure with its route's template, its status and the error's type: no body, no
    path values, no query."""

    def __init__(self, app: ASGIApp, *, db: Database, body: Callable[[], dict[str, Any]]) -> None:
        self.app, self._db, self._body = app, db, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started: list[int] = []
        recorded: list[bool] = []

        async def record(status: int, error: str | None) -> None:
            # Before the answer's last byte leaves: a client that saw the 500 finds it audited.
            if recorded:
                return
            recorded.append(True)
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            actor = scope.get("state", {}).get("actor") or UNAUTHENTICATED
            await run_in_threadpool(self._record, actor, str(route), status, error)

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.append(int(message["status"]))
            elif (
                message["type"] == "http.response.body"
                and not message.get("more_body")
                and started
                and started[0] >= 500
            ):
                await record(started[0], None)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            await record(500, type(exc).__name__)
            if not started:
                body = json.dumps(self._body()).encode()
                headers = [
                    (b"content-type", b"application/fhir+json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({"type": "http.response.start", "status": 500, "headers": headers})
                await send({"type": "http.response.body", "body": body})

    def _record(self, actor: str, route: str, status: int, error: str | None) -> None:
        detail: dict[str, Any] = {"status": status} | ({"error_type": error} if error else {})
        try:
            with self._db.transaction() as session:
                audit.append(
                    session,
                    actor=actor,
                    action="api.error",
                    entity=route,
                    outcome=audit.Outcome.FAILURE,
                    detail=detail,
                )
        except Exception as exc:
            log.error("could not audit a failed request", extra={"error_type": type(exc).__name__})
        log.error("API request failed", extra={"event": "api.error", "route": route, **detail})
