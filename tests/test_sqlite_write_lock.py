"""On SQLite one writer holds the lock at a time, and the pipeline, the inbox and the relay
all queue for it. What only reads must not join that queue, and what runs inside a write
transaction must not scan whole tables (issue 16: steady-rate latency)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from core.db import Database
from deid import Vault
from sandbox.runner import due_job_ids
from sidecar.outputs import OutputIntake, _owners_select, _versions_select
from sidecar.stats import StatusCounts
from tests.plans import query_plan
from worker.leakguard import LeakGuard
from worker.publishers import LocalBus
from worker.relay import Relay


@contextmanager
def write_lock_held(db: Database) -> Iterator[None]:
    """Another connection holds SQLite's write lock (as a pipeline batch does) until the end."""
    path = db.url.split("///", 1)[1]
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_idle_polls_answer_while_a_writer_holds_the_lock(db: Database) -> None:
    """Each would otherwise wait up to the busy timeout (30 s) and then fail "database is
    locked": here each answers while the lock is still held."""
    vault = Vault(b"k" * 32)
    with write_lock_held(db):
        assert Relay(db, LocalBus(), guard=LeakGuard(vault)).run_once() == 0
        assert OutputIntake(db, LeakGuard(vault)).run_once() == 0
        assert due_job_ids(db) == []
        status = StatusCounts(db)()
        assert status["inbox"]["pending"] == 0
        assert status["resources"] == {}


@pytest.mark.parametrize("count", [1, 2, 40])
def test_a_summarys_inputs_are_looked_up_by_key_not_by_scanning(db: Database, count: int) -> None:
    heads = [("Observation", f"o{i}") for i in range(count)]
    owners = query_plan(db, _owners_select(heads))
    versions = query_plan(db, _versions_select([(t, i, 1) for t, i in heads]))
    for plan, table in ((owners, "resources"), (versions, "resource_history")):
        assert f"SCAN {table}" not in plan, plan
        assert f"SEARCH {table}" in plan, plan


def test_status_counts_reuse_the_resource_count_only(db: Database) -> None:
    """The resources by type may be a few seconds old; the queue counts never are."""
    counts = StatusCounts(db, max_age_s=3600.0)
    assert counts()["resources"] == {}
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO resources (resource_type, resource_id, version, body, content_hash, updated_at) "
            "VALUES ('Observation', 'o1', 1, '{}', 'h', '2026-12-07 00:00:00.000000')"
        )
        connection.exec_driver_sql(
            "INSERT INTO quarantine (received_at, source, peer, reason, code, raw) "
            "VALUES ('2026-12-07 00:00:00.000000', 'mllp', 'p', 'r', 'c', x'00')"
        )
    again = counts()
    assert again["resources"] == {}  # within max_age_s: the count read before
    assert again["quarantined"] == 1  # read at each call
    assert StatusCounts(db, max_age_s=0.0)()["resources"] == {"Observation": 1}
