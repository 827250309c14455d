"""A hostile ``SummaryModel`` for tests/security/test_model_zone.py.

Run inside the model zone (the sandbox child process of `sidecar serve`, named by the
``sandbox_model`` setting), it tries every way to identified data it can reach from there:
every database handle in the process (found by the garbage collector, or in the runner's
frame), the screen it finds in the runner's frame (a vault or secret on it, and bisection
of its answers for the patient's surname). Each attempt and its outcome is appended to the
JSON-lines file named by ``SIDECAR_TEST_HOSTILE_LOG`` (the test reads it), and whatever it
obtained is put into its answer, so the test can also check that nothing of it got out.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

from sandbox.models import ExtractiveSummarizer, ModelReply
from sandbox.prompt import Prompt

__all__ = ["CANDIDATES", "STATEMENTS", "HostileModel"]

# What a model would do with a database handle: read every identified table, rewrite what
# it may not (a job's patient, the served resources), publish on its own (outbox), widen
# its reach (ATTACH, a new table, a PRAGMA write), cover its tracks (the audit log).
STATEMENTS: dict[str, str] = {
    "read inbox": "SELECT raw FROM inbox",
    "count inbox": "SELECT count(*) FROM inbox",
    "read reid_map": "SELECT authority, identifier FROM reid_map",
    "read phi_tokens": "SELECT token, kind FROM phi_tokens",
    "read patient_phi": "SELECT kind, value FROM patient_phi",
    "read quarantine": "SELECT raw FROM quarantine",
    "read dead_letters": "SELECT reason FROM dead_letters",
    "read intake_journals": "SELECT journal_id FROM intake_journals",
    "read app_acks": "SELECT payload FROM app_acks",
    "read audit_log": "SELECT detail FROM audit_log",
    "update jobs.patient": "UPDATE jobs SET patient = 'stolen'",
    "update resources": "UPDATE resources SET body = body",
    "insert outbox": (
        "INSERT INTO outbox (event_id, routing_key, body, created_at, attempts, screened) "
        "VALUES ('hostile', 'hostile', '{}', CURRENT_TIMESTAMP, 0, TRUE)"
    ),
    "insert resource_history": (
        "INSERT INTO resource_history (resource_type, resource_id, version, body, origin, recorded_at) "
        "VALUES ('Patient', 'hostile', 1, '{}', 'hostile', CURRENT_TIMESTAMP)"
    ),
    "insert dead_letters": (
        "INSERT INTO dead_letters (stage, code, reason, created_at) "
        "VALUES ('hostile', 'hostile', 'hostile', CURRENT_TIMESTAMP)"
    ),
    "delete audit_log": "DELETE FROM audit_log",
    "create table": "CREATE TABLE hostile_copy (raw BLOB)",
}
SQLITE_ONLY: dict[str, str] = {
    "attach": "ATTACH DATABASE '{path}' AS hostile",
    "pragma write": "PRAGMA cache_size = 1000",
    "read sqlite_master": "SELECT sql FROM sqlite_master",
}

# The patient's surname (tests/fixtures/messages.py) among 63 others: what bisection of the
# screen's answers would single out in 6 screenings.
CANDIDATES = ["Quimby"] + [f"Surname{chr(65 + i // 26)}{chr(65 + i % 26)}x" for i in range(63)]
_PROJECT = {"core", "deid", "worker", "sidecar", "connectors", "mapping", "audit"}
_SUSPECT_TYPES = {"Vault", "Settings", "ScreenService", "LeakGuard", "PipelineContext", "SecretStr"}


class HostileModel:
    name = "hostile"
    version = "1"

    def __init__(self) -> None:
        self._log = os.environ.get("SIDECAR_TEST_HOSTILE_LOG", "")
        self._honest = ExtractiveSummarizer()
        self._loot: list[str] = []

    def answer(self, prompt: Prompt) -> ModelReply:
        frame = _runner_frame()
        self._databases(frame)
        self._secrets(frame)
        self._bisect(frame)
        honest = json.loads(self._honest.answer(prompt).content)
        # Whatever was obtained goes into the answer: the way out a real model would use.
        honest["sentences"] += [{"text": loot, "facts": ["F1"]} for loot in self._loot]
        return ModelReply(json.dumps(honest), model=self.name)

    # --- attempts ---------------------------------------------------------------------

    def _record(self, path: str, attempt: str, ok: bool, detail: str = "") -> None:
        if not self._log:
            return
        with open(self._log, "a", encoding="utf-8") as out:
            out.write(
                json.dumps({"path": path, "attempt": attempt, "succeeded": ok, "detail": detail}) + "\n"
            )

    def _databases(self, frame: dict[str, Any]) -> None:
        handles: list[tuple[str, Any]] = []
        seen: set[int] = set()
        candidates = list(frame.values()) + gc.get_objects()
        for obj in candidates:
            kind = _handle_kind(obj)
            if kind and id(obj) not in seen:
                seen.add(id(obj))
                handles.append((kind, obj))
        self._record("handles", "found database handles", False, ",".join(sorted({k for k, _ in handles})))
        for kind, handle in handles:
            statements = dict(STATEMENTS)
            path = _sqlite_path(kind, handle)
            if path is not None:
                statements.update({k: v.format(path=path) for k, v in SQLITE_ONLY.items()})
            for attempt, sql in statements.items():
                ok, detail = _execute(kind, handle, sql)
                if ok and detail:
                    self._loot.append(detail[:200])
                self._record(kind, attempt, ok, f"read {len(detail)} characters" if ok else detail)

    def _secrets(self, frame: dict[str, Any]) -> None:
        found = sorted({_qualified(o) for o in gc.get_objects() if _suspect(o)})
        self._record("gc", "vault, settings or secret object in the process", bool(found), ",".join(found))
        screen = frame.get("screen")
        reached = _reach(screen, depth=4)
        self._record("screen", "vault, secret or database on the screen object", bool(reached), reached)

    def _bisect(self, frame: dict[str, Any]) -> None:
        screen, job_id = frame.get("screen"), frame.get("job_id")
        if screen is None or job_id is None:
            self._record("screen", "bisect the screen for the surname", False, "no screen in reach")
            return
        pool, calls = list(CANDIDATES), 0
        try:
            while len(pool) > 1:
                half = pool[: len(pool) // 2]
                calls += 1
                hit = _verdict(screen, job_id, frame.get("patient"), " ".join(half))
                pool = half if hit else pool[len(pool) // 2 :]
        except Exception as exc:
            self._record(
                "screen", "bisect the screen for the surname", False, f"{type(exc).__name__} after {calls}"
            )
            return
        recovered = pool[0] == CANDIDATES[0]
        if recovered:
            self._loot.append(pool[0])
        self._record("screen", "bisect the screen for the surname", recovered, f"{calls} screenings")


def _qualified(obj: Any) -> str:
    return f"{getattr(type(obj), '__module__', '?')}.{type(obj).__name__}"


def _suspect(obj: Any) -> bool:
    """The sidecar's own vault, settings, screen service... (not, say, Celery's Settings)."""
    if type(obj).__name__ not in _SUSPECT_TYPES:
        return False
    module = getattr(type(obj), "__module__", None)
    top = module.split(".")[0] if isinstance(module, str) else ""
    return top in _PROJECT or type(obj).__name__ == "SecretStr"


def _runner_frame() -> dict[str, Any]:
    """The locals of the runner that called the model (job id, database, screen, patient)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name in ("run_job", "_summarize", "_run"):
            return dict(frame.f_locals)
        frame = frame.f_back  # type: ignore[assignment]
    return {}


def _handle_kind(obj: Any) -> str | None:
    module = getattr(type(obj), "__module__", None)
    module = module if isinstance(module, str) else ""
    name = type(obj).__name__
    if module.startswith("sqlalchemy") and name in ("Engine", "OptionEngine"):
        return "sqlalchemy-engine"
    if isinstance(obj, sqlite3.Connection):
        return "sqlite3-connection"
    if module.startswith("psycopg") and name == "Connection":
        return "psycopg-connection"
    return None


def _sqlite_path(kind: str, handle: Any) -> str | None:
    if kind == "sqlalchemy-engine" and handle.dialect.name == "sqlite":
        return str(handle.url.database)
    if kind == "sqlite3-connection":
        try:
            row = handle.execute("PRAGMA database_list").fetchone()
            return str(row[2])
        except sqlite3.Error:
            return None
    return None


def _execute(kind: str, handle: Any, sql: str) -> tuple[bool, str]:
    """(it worked, what it read or why it failed); every write is rolled back."""
    try:
        if kind == "sqlalchemy-engine":
            with handle.connect() as conn:
                try:
                    rows = conn.exec_driver_sql(sql)
                    data = _first(rows.fetchall() if rows.returns_rows else [])
                finally:
                    conn.rollback()
                    if sql.startswith("ATTACH"):
                        _quietly(lambda: conn.exec_driver_sql("DETACH DATABASE hostile"))
            return True, data
        if kind == "sqlite3-connection":
            # A pooled connection of the sandbox's own (autocommit): in a transaction of
            # ours, rolled back, so the attempt changes nothing even where it works.
            cur = handle.cursor()
            own = not handle.in_transaction
            try:
                if own:
                    cur.execute("BEGIN")
                cur.execute(sql)
                data = _first(cur.fetchall())
            finally:
                if own and handle.in_transaction:
                    cur.execute("ROLLBACK")
                if sql.startswith("ATTACH"):
                    _quietly(lambda: cur.execute("DETACH DATABASE hostile"))
            return True, data
        if kind == "psycopg-connection":
            try:
                cur = handle.execute(sql)
                data = _first(cur.fetchall() if cur.description else [])
            finally:
                handle.rollback()
            return True, data
    except Exception as exc:
        return False, f"{type(exc).__name__}: {str(exc)[:120]}"
    return False, "unknown handle"


def _quietly(action: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):
        action()


def _first(rows: list[Any]) -> str:
    if not rows:
        return ""
    value = rows[0][0]
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _reach(obj: Any, *, depth: int) -> str:
    """Names of vault-, secret- or database-like things reachable through attributes."""
    found: set[str] = set()
    stack: list[tuple[Any, int]] = [(obj, 0)]
    seen: set[int] = set()
    while stack:
        item, level = stack.pop()
        if item is None or id(item) in seen or level > depth:
            continue
        seen.add(id(item))
        name = type(item).__name__
        if _suspect(item) or _handle_kind(item) or name == "Database":
            found.add(name)
        if isinstance(item, bytes) and len(item) >= 16:
            found.add("bytes")
        attrs: dict[str, Any] = {}
        with contextlib.suppress(TypeError):
            attrs = dict(vars(item))
        closure = getattr(item, "__closure__", None) or ()
        values = list(attrs.values()) + [c.cell_contents for c in closure if c.cell_contents is not None]
        stack.extend((v, level + 1) for v in values if not isinstance(v, str | int | float | bool))
    return ",".join(sorted(found))


def _verdict(screen: Callable[..., Any], job_id: int, patient: Any, text: str) -> bool:
    """True when the screen says the text holds one of the patient's identifiers."""
    try:
        answer = screen(job_id, text, "answer")
    except TypeError:
        answer = screen(job_id, patient, text, "answer")  # the older signature
    if isinstance(answer, list):
        return bool(answer)
    return str(answer) == "leak"
