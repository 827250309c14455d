"""The outgoing leak guard: an event carrying its patient's identifier never leaves."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connectors.inbox import DatabaseInbox
from core.db import Database
from core.events import ChangeKind, resource_event, resource_routing_key
from core.settings import Settings
from core.store import add_outbox
from core.tables import AuditEntry, DeadLetter, OutboxEvent, PhiToken, Resource
from deid import Vault
from sidecar.stats import collect
from tests.deployments import Embedded, wait_for
from tests.fixtures.messages import ADT_A01, encoded, inbound
from worker import leakguard
from worker.batch import process
from worker.context import build_context
from worker.leakguard import LeakGuard
from worker.publishers import LocalBus
from worker.relay import Relay


def test_a_planted_leak_is_blocked_dead_lettered_and_audited(tmp_path: Path) -> None:
    dep = Embedded(tmp_path / "data")
    dep.start()
    try:
        dep.deliver(encoded(ADT_A01))
        clean_events = len(dep.events)
        assert clean_events > 0  # de-identified events went out
        with dep.db.sessions() as s:
            patient = s.execute(
                select(Resource.resource_id).where(Resource.resource_type == "Patient")
            ).scalar_one()

        # A de-identification bug, simulated: an Observation whose text names the patient.
        now = datetime.now(UTC)
        leaky = {
            "resourceType": "Observation",
            "id": "leaky1",
            "meta": {"versionId": "1"},
            "status": "final",
            "code": {"text": "Note"},
            "subject": {"reference": f"Patient/{patient}"},
            "valueString": "Discussed with QUIMBY, Harriet; call back on 217 555 0147",
        }
        safe = {**leaky, "id": "safe1", "valueString": "Discussed with [NAME]; call back on [PHONE]"}
        with dep.db.transaction() as s:
            for resource in (leaky, safe):
                event = resource_event(resource, ChangeKind.CREATED, patient=patient, time=now)
                add_outbox(s, event, resource_routing_key("Observation", ChangeKind.CREATED), now=now)
        assert dep.app is not None and dep.app.relay_loop is not None  # an in-process bus: a thread
        dep.app.relay_loop.wake()
        wait_for(lambda: collect(dep.db)["events"]["pending"] == 0, timeout=30)

        published = [json.loads(b) for b in dep.events[clean_events:]]
        assert [e["data"]["id"] for e in published] == ["safe1"]
        assert "Quimby" not in json.dumps(dep.event_bodies(), ensure_ascii=False)
        with dep.db.sessions() as s:
            row = s.execute(
                select(OutboxEvent).where(OutboxEvent.event_id == "Observation/leaky1/_history/1")
            ).scalar_one()
            assert row.sent_at is None and row.blocked_at is not None
            assert row.block_reason is not None and "NAME" in row.block_reason and "PHONE" in row.block_reason
            assert "Quimby" not in row.block_reason and "0147" not in row.block_reason
            letter = s.execute(select(DeadLetter).where(DeadLetter.stage == "relay")).scalar_one()
            assert letter.code == "identifier-leak"
            blocked = s.execute(select(AuditEntry).where(AuditEntry.action == "event.blocked")).scalar_one()
            assert blocked.outcome == "failure" and "leaky1" in blocked.detail
        assert collect(dep.db)["events"]["blocked"] == 1
    finally:
        dep.stop()


def test_the_pipeline_screens_the_events_it_writes_and_the_relay_trusts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leak check runs where the events are written (the pipeline's processes): a
    de-identification bug that lets a name through blocks that event there, with the dead
    letter and audit entry the relay would have written; the rest are marked screened and
    the relay publishes them without checking them again."""
    import deid

    real = deid.deidentify

    def leaky(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        for item in result.resources:
            if item.resource["resourceType"] == "Encounter":  # the bug: a name survives
                item.resource["extension"] = [{"url": "urn:x", "valueString": "seen by Quimby"}]
        return result

    monkeypatch.setattr("worker.pipeline.deidentify", leaky)
    ctx = build_context(Settings(data_dir=tmp_path))
    inbox = DatabaseInbox(ctx.db)
    (receipt,) = inbox.commit_many([inbound(encoded(ADT_A01))])
    assert process(ctx, receipt.inbox_id).outcome == "processed"
    inbox.close()

    class CountingGuard(LeakGuard):
        checked = 0

        def check_events(self, session: Any, bodies: Any) -> list[list[str]]:
            CountingGuard.checked += len(bodies)
            return super().check_events(session, bodies)

    bus = LocalBus()
    published: list[str] = []
    bus.subscribe(lambda event: published.append(event.event_id))
    assert Relay(ctx.db, bus, guard=CountingGuard(ctx.vault)).drain() > 0
    with ctx.db.sessions() as s:
        rows = s.execute(select(OutboxEvent)).scalars().all()
        (blocked,) = [r for r in rows if r.blocked_at is not None]
        letter = s.execute(select(DeadLetter)).scalar_one()
        audit_entry = s.execute(select(AuditEntry).where(AuditEntry.action == "event.blocked")).scalar_one()
    assert all(r.screened for r in rows) and CountingGuard.checked == 0
    assert blocked.event_id.startswith("Encounter/") and blocked.event_id not in published
    assert (
        blocked.block_reason is not None
        and "NAME" in blocked.block_reason
        and "Quimby" not in blocked.block_reason
    )
    assert (letter.stage, letter.code) == ("relay", "identifier-leak")
    assert audit_entry.actor == "worker:pipeline" and audit_entry.entity == f"outbox/{blocked.id}"
    assert sorted(published) == sorted(r.event_id for r in rows if r.blocked_at is None)
    ctx.db.dispose()


def test_a_date_is_not_read_as_an_identifier_but_every_other_string_is() -> None:
    """A whole date string is passed over (a 4-digit MRN must not block every event of that
    year); a date with a number hidden in it, and every other string at any depth, is read."""
    from deid import Vault
    from deid.tokens import identifier_tokens

    vault = Vault(b"leak-guard-test-secret-0123456789")
    guard = LeakGuard(vault)
    values = {"2026": "ID", "4711234": "ID", "QUIMBY Harriet": "NAME", "217 555 0147": "PHONE"}
    guard.learn("p1", identifier_tokens(values, vault))

    def kinds(payload: Any) -> list[str]:
        return guard.kinds_in(None, "p1", payload)  # type: ignore[arg-type]  # tokens learnt: no read

    assert kinds({"effectiveDateTime": "2026-03-01T08:00:00+08:00", "issued": "2026-03-01"}) == []
    assert kinds({"valueString": "MRN 2026 on file"}) == ["ID"]
    assert kinds({"effectiveDateTime": "2026-03-01T08:00:00.4711234"}) == ["ID"]
    assert kinds({"note": [{"text": "seen"}, {"text": ["x", {"deep": "Harriet Quimby"}]}]}) == ["NAME"]
    assert kinds({"id": "2175550147", "valueString": "call (217) 555-0147"}) == ["PHONE"]
    assert kinds({"id": "QUIMBY", "reference": "Patient/4711234", "valueInteger": 2026}) == []


def test_a_patients_tokens_are_read_again_once_older_than_asked(db: Database) -> None:
    """The pipeline keeps a patient's tokens between batches (it learns its own); what another
    writer adds reaches it once what it read is older than ``max_age_s``."""
    guard = LeakGuard(Vault(b"k" * 32))
    with db.transaction() as s:
        s.add(PhiToken(patient="p1", token="t-old", kind="ID"))
    with db.reads() as s:
        guard.prefetch(s, ["p1"], max_age_s=3600.0)
        assert guard.kinds_of(s, "p1", frozenset({"t-old", "t-new"})) == ["ID"]
    with db.transaction() as s:
        s.add(PhiToken(patient="p1", token="t-new", kind="PHONE"))
    with db.reads() as s:
        guard.prefetch(s, ["p1"], max_age_s=3600.0)  # read just now: kept
        assert guard.kinds_of(s, "p1", frozenset({"t-new"})) == []
        guard.prefetch(s, ["p1"], max_age_s=0.0)  # any age is too old: read again
        assert guard.kinds_of(s, "p1", frozenset({"t-new"})) == ["PHONE"]
    guard.forget()
    with db.reads() as s:
        guard.prefetch(s, ["p1"])  # forgotten: read whatever max_age_s
        assert guard.kinds_of(s, "p1", frozenset({"t-old", "t-new"})) == ["ID", "PHONE"]


def test_every_patient_asked_for_stays_cached_whatever_the_bound(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``learn`` adds a batch's tokens to what ``prefetch`` read: a patient evicted in
    between would be screened against the batch's tokens alone."""
    monkeypatch.setattr(leakguard, "_CACHE_PATIENTS", 2)
    guard = LeakGuard(Vault(b"k" * 32))
    with db.transaction() as s:
        s.add(PhiToken(patient="p0", token="t-stored", kind="ID"))
    with db.reads() as s:
        guard.prefetch(s, ["p0"])
        guard.prefetch(s, ["p1"])
        guard.prefetch(s, ["p0", "p2"], max_age_s=3600.0)  # p0 cached and the oldest; p2 new
        guard.learn("p0", {"t-batch": "NAME"})
        assert guard.kinds_of(s, "p0", frozenset({"t-stored", "t-batch"})) == ["ID", "NAME"]
