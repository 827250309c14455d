"""What the model zone (the sandbox) may do in the database: one allow-list, two enforcers.

Per table, the columns the model zone may SELECT (this includes columns a WHERE clause or
a SET expression reads), INSERT and UPDATE; anything not listed is refused, including every
table of the identified zone (core.identified_tables) and every DELETE. Narrowed to what a
summary job needs: claim its job by id (status, attempts, timestamps; never ``patient``),
read de-identified resources, and insert its verified output (``job_outputs``) and its
audit entries. The identified zone stores the output (resources, outbox, dead letters)
after checking it again (sidecar.outputs).

PostgreSQL enforces it with column-level grants to ``sidecar_model_zone`` (migration
0014); SQLite with an authorizer on the model zone's own connections
(``sqlite_authorizer``, installed by core.db.model_zone_engine).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["MODEL_ZONE", "ROLE", "Access", "sqlite_authorizer"]

ROLE = "sidecar_model_zone"


@dataclass(frozen=True)
class Access:
    select: frozenset[str] = frozenset()
    insert: frozenset[str] = frozenset()
    update: frozenset[str] = frozenset()


def _cols(*names: str) -> frozenset[str]:
    return frozenset(names)


MODEL_ZONE: Mapping[str, Access] = {
    # Claim a due job by id, defer it (pending again, due later): status and timing only.
    "jobs": Access(
        select=_cols("id", "kind", "patient", "status", "due_at", "attempts", "updated_at"),
        update=_cols("status", "attempts", "due_at", "updated_at"),
    ),
    # The context: a patient's de-identified resources (read only).
    "resources": Access(select=_cols("resource_type", "resource_id", "version", "patient", "body")),
    # Its output, for the identified zone to check and store. SELECT id: PostgreSQL's
    # INSERT ... RETURNING of the generated key.
    "job_outputs": Access(
        select=_cols("id"),
        insert=_cols("job_id", "outcome", "body", "code", "reason", "created_at"),
    ),
    # Audit entries (append-only: it may not read or delete the log); the chain head is
    # read and moved under its lock.
    "audit_log": Access(
        insert=_cols("seq", "at", "actor", "action", "outcome", "entity", "detail", "prev_hash", "hash")
    ),
    "audit_head": Access(select=_cols("id", "seq", "hash"), update=_cols("seq", "hash")),
    # The patient an entry concerns (the job's, when it reads the context): the log's index.
    "audit_patients": Access(insert=_cols("patient", "seq")),
    "alembic_version": Access(select=_cols("version_num")),
}

Authorizer = Callable[[int, str | None, str | None, str | None, str | None], int]

# Statement kinds that touch no table's data: allowed. Everything not named here or below
# (ATTACH, DETACH, PRAGMA, DELETE, CREATE, DROP, ALTER, ANALYZE, REINDEX, virtual tables)
# is denied.
_NEUTRAL = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT, sqlite3.SQLITE_FUNCTION}
    | ({sqlite3.SQLITE_RECURSIVE} if hasattr(sqlite3, "SQLITE_RECURSIVE") else set())
)


def sqlite_authorizer(allow: Mapping[str, Access] = MODEL_ZONE) -> Authorizer:
    """A ``sqlite3.Connection.set_authorizer`` callback that allows exactly ``allow``.

    SQLite asks it while preparing each statement: READ per column read (an empty column
    name for a table referenced without reading a column, e.g. ``count(*)``), INSERT per
    table, UPDATE per column set. Only the ``main`` database is ever allowed."""

    def authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, _src: str | None) -> int:
        if action in _NEUTRAL:
            return sqlite3.SQLITE_OK
        if db not in (None, "main") or arg1 is None:
            return sqlite3.SQLITE_DENY
        access = allow.get(arg1)
        if access is None:
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_READ:
            ok = arg2 in access.select or (arg2 == "" and bool(access.select))
        elif action == sqlite3.SQLITE_INSERT:
            ok = bool(access.insert)
        elif action == sqlite3.SQLITE_UPDATE:
            ok = arg2 in access.update
        else:
            ok = False
        return sqlite3.SQLITE_OK if ok else sqlite3.SQLITE_DENY

    return authorize
