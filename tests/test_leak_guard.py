"""The outgoing leak guard: an event carrying its patient's identifier never leaves."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from core.events import ChangeKind, resource_event, resource_routing_key
from core.store import add_outbox
from core.tables import AuditEntry, DeadLetter, OutboxEvent, Resource
from sidecar.stats import collect
from tests.deployments import Embedded, wait_for
from tests.fixtures.messages import ADT_A01, encoded


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
        assert dep.app is not None
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
