"""The batch pipeline as users run it (issue 16): a pipeline process killed in the middle
of a batch loses nothing and repeats nothing, and one bad message does not fail the batch
it arrived in. Over real sockets, on the embedded default (`sidecar serve` and its pipeline
process) and in production (`sidecar serve` + two `sidecar worker` processes on PostgreSQL
and RabbitMQ)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from audit import verify
from core.db import Database
from core.settings import Settings
from core.tables import AuditEntry, DeadLetter, InboxEntry, InboxStatus, OutboxEvent, Resource
from tests.deployments import REPO, Production, wait_for
from tests.fixtures.load import SEQ_CODE, ack_codes, document_without_txa, feed, send_over_connections

PATIENTS, PER_PATIENT, CONNECTIONS = 60, 25, 4
OBSERVATIONS_PER_RESULT = 3


def _per_connection(messages_by_patient: list[list[bytes]]) -> list[list[bytes]]:
    # One patient, one connection: their results arrive in sequence order.
    out: list[list[bytes]] = [[] for _ in range(CONNECTIONS)]
    for p, messages in enumerate(messages_by_patient):
        out[p % CONNECTIONS] += messages
    return out


def _processed(db: Database) -> int:
    with db.sessions() as s:
        return int(
            s.execute(
                select(func.count()).where(InboxEntry.status != InboxStatus.RECEIVED).select_from(InboxEntry)
            ).scalar_one()
        )


def _check_exactly_once(db: Database, *, results: int, failed: int = 0) -> None:
    """Every acknowledged message processed once: one audit entry each, one version and one
    event per resource, and each patient's events in the order their results arrived."""
    with db.sessions() as s:
        statuses = dict(s.execute(select(InboxEntry.status, func.count()).group_by(InboxEntry.status)).all())
        assert statuses.get(InboxStatus.PROCESSED, 0) == results
        assert statuses.get(InboxStatus.FAILED, 0) == failed
        assert statuses.get(InboxStatus.RECEIVED, 0) == 0
        processed_ids = set(
            s.execute(select(InboxEntry.id).where(InboxEntry.status == InboxStatus.PROCESSED)).scalars()
        )
        audited: list[int] = []
        for detail in s.execute(
            select(AuditEntry.detail).where(AuditEntry.action == "messages.processed")
        ).scalars():
            audited += [int(i) for i in json.loads(detail)["entries"]]
        assert sorted(audited) == sorted(processed_ids)  # each in exactly one entry
        observations = s.execute(
            select(func.count()).where(Resource.resource_type == "Observation").select_from(Resource)
        ).scalar_one()
        assert observations == results * OBSERVATIONS_PER_RESULT
        events = s.execute(
            select(OutboxEvent.event_id, OutboxEvent.body)
            .where(OutboxEvent.routing_key == "fhir.Observation.created")
            .order_by(OutboxEvent.id)
        ).all()
        assert len(events) == len({e for e, _ in events}) == observations
        sequence: dict[str, list[int]] = defaultdict(list)
        for _, body in events:
            event = json.loads(body)
            if event["data"]["code"]["coding"][0]["code"] == SEQ_CODE:
                sequence[event["subject"]].append(int(event["data"]["valueQuantity"]["value"]))
    assert sum(len(v) for v in sequence.values()) == results
    assert all(values == sorted(values) for values in sequence.values()), "a patient's events out of order"
    assert verify(db.engine).ok


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


class _Load(threading.Thread):
    def __init__(self, port: int, per_connection: list[list[bytes]]) -> None:
        super().__init__(daemon=True)
        self.port, self.per_connection = port, per_connection
        self.acks: list[bytes] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.acks = send_over_connections(self.port, self.per_connection)
        except BaseException as exc:
            self.error = exc


def _serve(data_dir: Path, **env: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "serve.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(data_dir), "--mllp-port", "0"],
        cwd=REPO,
        env={**os.environ, "SIDECAR_RELAY_INTERVAL_S": "0.05", **env},
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, (data_dir / "serve.log").read_text()
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen[str], data_dir: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, (data_dir / "serve.log").read_text()[-4000:]


def test_sigkill_of_the_embedded_pipeline_process_mid_batch_loses_and_repeats_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    serve, listening = _serve(data)
    db = Database(Settings(data_dir=data))
    try:
        victim, *others = listening["pipeline_pids"]  # one per core by default
        assert victim in _children(serve.pid)
        load = _Load(listening["mllp_port"], _per_connection(feed(PATIENTS, PER_PATIENT)))
        load.start()
        total = PATIENTS * PER_PATIENT
        # Killed while it has a backlog: the batch in hand is lost with it, uncommitted.
        wait_for(lambda: _processed(db) >= 100, timeout=120, interval=0.01)
        os.kill(victim, signal.SIGKILL)
        load.join(300)
        assert load.error is None and ack_codes(load.acks) == ["AA"] * total
        # serve starts a new pipeline process, which takes the backlog in order.
        wait_for(lambda: _processed(db) == total, timeout=300, interval=0.2)
        assert victim not in _children(serve.pid) and all(o in _children(serve.pid) for o in others)
        _stop(serve, data)
        assert "child process died; starting it again" in (data / "serve.log").read_text()
        _check_exactly_once(db, results=total)
    finally:
        if serve.poll() is None:
            serve.kill()
        db.dispose()


@pytest.mark.integration
def test_sigkill_of_a_production_worker_mid_batch_loses_and_repeats_nothing(
    tmp_path: Path, pg_url: str, rabbit_vhost: str
) -> None:
    dep = Production(
        tmp_path / "data",
        pg_url,
        rabbit_vhost,
        lanes_per_worker=[[0, 1], [2, 3]],
        binding="fhir.Observation.#",
    )
    dep.start()
    try:
        load = _Load(dep.port, _per_connection(feed(PATIENTS, PER_PATIENT)))
        load.start()
        total = PATIENTS * PER_PATIENT
        wait_for(lambda: _processed(dep.db) >= 100, timeout=120, interval=0.01)
        dep.procs["worker-0"].send_signal(signal.SIGKILL)
        dep.procs["worker-0"].wait(10)
        load.join(300)
        assert load.error is None and ack_codes(load.acks) == ["AA"] * total
        # The operator (or systemd) starts it again: its lanes' backlog is still there.
        dep._spawn("worker-0", "worker", "--lane", "0", "--lane", "1")
        wait_for(lambda: _processed(dep.db) == total, timeout=300, interval=0.2)
        dep.settle()
        _check_exactly_once(dep.db, results=total)
        # The subscriber's queue: at-least-once, so de-duplicated by event id; per patient in order.
        received: dict[str, dict[str, Any]] = {}
        for event in dep.event_bodies():
            received.setdefault(event["id"], event)
        sequence: dict[str, list[int]] = defaultdict(list)
        for event in received.values():
            if event["data"]["code"]["coding"][0]["code"] == SEQ_CODE:
                sequence[event["subject"]].append(int(event["data"]["valueQuantity"]["value"]))
        assert sum(len(v) for v in sequence.values()) == total
        assert all(v == sorted(v) for v in sequence.values())
    finally:
        codes = dep.stop()
    assert codes.get("serve") == 0, dep.logs()


def _poisoned_batch(size: int) -> tuple[list[list[bytes]], int]:
    messages = [m for patient in feed(size // 5, 5, tag="B") for m in patient]
    messages[size // 2] = document_without_txa("POISON-1")
    return [messages], size


def _check_poison_isolated(db: Database, size: int) -> None:
    with db.sessions() as s:
        (letter,) = s.execute(select(DeadLetter)).scalars().all()
        poison = s.get_one(InboxEntry, letter.inbox_id)
        assert poison.control_id == "POISON-1" and poison.status == InboxStatus.FAILED
        assert (letter.stage, letter.code) == ("map", "mapping")
        assert "TXA" in letter.reason
        # Its batch-mates went through in the same batch as the poison.
        batches = [
            [int(i) for i in json.loads(d)["entries"]]
            for d in s.execute(
                select(AuditEntry.detail).where(AuditEntry.action == "messages.processed")
            ).scalars()
        ]
        assert any(min(b) < poison.id < max(b) for b in batches), "the poison was not inside a batch"
    _check_exactly_once(db, results=size - 1, failed=1)


def test_a_poison_message_inside_a_batch_of_500_fails_alone_embedded(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # The pipeline starts once all 500 are in the inbox: one batch of 500.
    serve, listening = _serve(data, SIDECAR_PIPELINE_BATCH_MAX="500", SIDECAR_PIPELINE_PROCESSES="1")
    db = Database(Settings(data_dir=data))
    try:
        os.kill(listening["pipeline_pids"][0], signal.SIGSTOP)
        per_connection, size = _poisoned_batch(500)
        acks = send_over_connections(listening["mllp_port"], per_connection)
        assert ack_codes(acks) == ["AA"] * size
        wait_for(lambda: _inbox_count(db) == size, timeout=60)
        os.kill(listening["pipeline_pids"][0], signal.SIGCONT)
        wait_for(lambda: _processed(db) == size, timeout=120, interval=0.1)
        _stop(serve, data)
        _check_poison_isolated(db, size)
        with db.sessions() as s:
            (entry,) = s.execute(
                select(AuditEntry.detail).where(AuditEntry.action == "messages.processed")
            ).scalars()
        assert len(json.loads(entry)["entries"]) == size - 1  # one batch: 499 stored together
    finally:
        if serve.poll() is None:
            serve.kill()
        db.dispose()


def _inbox_count(db: Database) -> int:
    with db.sessions() as s:
        return int(s.execute(select(func.count()).select_from(InboxEntry)).scalar_one())


@pytest.mark.integration
def test_a_poison_message_inside_a_batch_of_500_fails_alone_in_production(
    tmp_path: Path, pg_url: str, rabbit_vhost: str
) -> None:
    dep = Production(tmp_path / "data", pg_url, rabbit_vhost, lanes_per_worker=[[0, 1, 2, 3]])
    dep.start()
    try:
        worker = dep.procs["worker-0"]
        worker.send_signal(signal.SIGSTOP)  # everything queues up behind it: one lane's batch of its share
        per_connection, size = _poisoned_batch(500)
        assert ack_codes(send_over_connections(dep.port, per_connection)) == ["AA"] * size
        wait_for(lambda: _inbox_count(dep.db) == size, timeout=60)
        time.sleep(0.5)
        worker.send_signal(signal.SIGCONT)
        wait_for(lambda: _processed(dep.db) == size, timeout=180, interval=0.2)
        dep.settle()
        _check_poison_isolated(dep.db, size)
    finally:
        codes = dep.stop()
    assert codes.get("serve") == 0, dep.logs()


@pytest.mark.integration
def test_an_entry_the_database_refuses_is_dead_lettered_and_its_batch_mates_stored(
    tmp_path: Path, pg_url: str
) -> None:
    """PostgreSQL refuses an assigning authority longer than reid_map's 400 characters: the
    batch's transaction fails, each entry is tried alone, and only that one fails."""
    from connectors.inbox import DatabaseInbox
    from tests.fixtures.messages import inbound
    from worker.batch import process_entries
    from worker.context import build_context

    ctx = build_context(Settings(data_dir=tmp_path, database_url=pg_url))
    inbox = DatabaseInbox(ctx.db)
    messages = [m for patient in feed(4, 2, tag="R") for m in patient]
    messages[3] = messages[3].replace(b"^^^HOSP^MR", b"^^^" + b"H" * 500 + b"^MR")
    receipts = inbox.commit_many([inbound(m) for m in messages])
    result = process_entries(ctx, [r.inbox_id for r in receipts if r.inbox_id is not None])
    inbox.close()
    outcomes = [str(r.outcome) for r in result.results]
    assert outcomes.count("processed") == 7 and outcomes.count("dead-lettered") == 1
    with ctx.db.sessions() as s:
        (letter,) = s.execute(select(DeadLetter)).scalars().all()
        assert (letter.stage, letter.code) == ("store", "rejected-by-database")
        assert s.get_one(InboxEntry, letter.inbox_id).control_id == "R0001-00001"
    _check_exactly_once(ctx.db, results=7, failed=1)
    ctx.db.dispose()
