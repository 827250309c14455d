"""Skeleton acceptance on the embedded deployment: resends, garbage, dead letters."""

from __future__ import annotations

import json
import socket
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from connectors import MllpClient
from connectors.inbox import DatabaseInbox
from core.db import Database
from core.settings import Settings
from core.tables import DeadLetter, InboxEntry, QuarantineEntry, Resource
from sidecar import hospital
from sidecar.stats import collect
from tests.deployments import Embedded, msa
from tests.fixtures.messages import ADT_A01, ORU_R01, encoded, inbound, with_control_id


@pytest.fixture
def sidecar(tmp_path: Path):
    dep = Embedded(tmp_path / "data")
    dep.start()
    yield dep
    dep.stop()


def resource_counts(dep: Embedded) -> dict[str, int]:
    with dep.db.sessions() as s:
        return dict(
            s.execute(select(Resource.resource_type, func.count()).group_by(Resource.resource_type)).all()
        )


def test_a_resend_is_acknowledged_again_and_not_processed_twice(sidecar: Embedded) -> None:
    with MllpClient().connect("127.0.0.1", sidecar.port, timeout=30) as client:
        first = msa(client.send(encoded(ORU_R01)))
        sidecar.settle()
        counts_after_first = resource_counts(sidecar)
        events_after_first = len(sidecar.events)
        second = msa(client.send(encoded(ORU_R01)))
    sidecar.settle()
    assert first[1] == second[1] == "AA"
    assert first[2] == second[2] == "CTRL-LAB-0001"
    assert resource_counts(sidecar) == counts_after_first
    assert len(sidecar.events) == events_after_first
    stats = collect(sidecar.db)
    assert stats["inbox"]["received"] == 1
    assert stats["inbox"]["duplicates"] == 1


def test_same_content_under_a_new_control_id_creates_no_new_versions(sidecar: Embedded) -> None:
    with MllpClient().connect("127.0.0.1", sidecar.port, timeout=30) as client:
        client.send(encoded(ORU_R01))
        sidecar.settle()
        before = resource_counts(sidecar)
        events_before = len(sidecar.events)
        assert msa(client.send(encoded(with_control_id(ORU_R01, "CTRL-LAB-0002"))))[1] == "AA"
    sidecar.settle()
    assert resource_counts(sidecar) == before
    assert len(sidecar.events) == events_before  # deterministic ids + unchanged content: no event


def test_garbage_gets_ar_with_err_and_the_connection_stays_usable(sidecar: Embedded) -> None:
    with MllpClient().connect("127.0.0.1", sidecar.port, timeout=30) as client:
        nak = client.send(b"\x00\x01 this is not HL7 at all \xff\xfe")
        fields = msa(nak)
        assert fields[1] == "AR"
        assert b"\rERR|" in nak
        ok = msa(client.send(encoded(ADT_A01)))
        assert ok[1] == "AA" and ok[2] == "CTRL-ADT-0001"
    sidecar.settle()
    with sidecar.db.sessions() as s:
        quarantined = s.execute(select(QuarantineEntry)).scalars().all()
        assert len(quarantined) == 1 and quarantined[0].reason
        assert s.execute(select(InboxEntry.status)).scalar_one() == "processed"
    assert resource_counts(sidecar).get("Patient") == 1


def test_junk_outside_frames_does_not_break_the_connection(sidecar: Embedded) -> None:
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"\x0b" + encoded(ADT_A01) + b"\x1c\r")
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = sock.recv(4096)
            assert chunk, "connection closed"
            data += chunk
    assert msa(data.strip(b"\x0b\x1c\r"))[1] == "AA"


def test_an_unmappable_message_lands_in_dead_letters_with_its_reason(sidecar: Embedded) -> None:
    # A shifted header puts a name where the message type belongs: nothing to dispatch on.
    message = (
        "MSH|^~\\&|HIS|GENHOSP|SIDECAR|GENHOSP|20260301081500||Quimby Harriet^1976|CTRL-NOID-1|P|2.5.1\r"
        "PID|1||||Quimby^Harriet||19760412|F\r"
    )
    with MllpClient().connect("127.0.0.1", sidecar.port, timeout=30) as client:
        assert msa(client.send(encoded(message)))[1] == "AA"  # stored durably: accepted
    sidecar.settle()
    with sidecar.db.sessions() as s:
        letter = s.execute(select(DeadLetter)).scalar_one()
        assert letter.stage == "map" and letter.code == "mapping"
        assert "MSH-9" in letter.reason and "Quimby" not in letter.reason
        assert s.execute(select(InboxEntry.status)).scalar_one() == "failed"
    assert collect(sidecar.db)["inbox"]["failed"] == 1


def test_messages_acknowledged_before_a_crash_are_processed_at_start(tmp_path: Path) -> None:
    """The inbox is the source of truth: an entry committed (and so ACKed) whose pipeline
    run never happened, as after a crash between commit and dispatch, is processed when
    the sidecar starts again."""
    settings = Settings(data_dir=tmp_path / "data")
    db = Database(settings)
    db.migrate()
    raw = encoded(ADT_A01)
    receipt = DatabaseInbox(db).commit(inbound(raw, peer="127.0.0.1:1"))
    assert not receipt.duplicate
    assert collect(db)["inbox"]["pending"] == 1
    db.dispose()

    restarted = Embedded(tmp_path / "data")
    restarted.start()
    try:
        restarted.settle()
        assert collect(restarted.db)["inbox"]["processed"] == 1
        assert resource_counts(restarted).get("Patient") == 1
    finally:
        restarted.stop()


def test_a_discharge_updates_the_admission_encounter_and_triggers_a_summary(sidecar: Embedded) -> None:
    patient = hospital.make_patients(1)[0]
    admitted, left = datetime(2026, 3, 1, 8, 0), datetime(2026, 3, 3, 10, 0)
    with MllpClient().connect("127.0.0.1", sidecar.port, timeout=30) as client:
        assert msa(client.send(hospital.admit(patient, "V1", admitted, "A-1")))[1] == "AA"
        assert msa(client.send(hospital.discharge(patient, "V1", admitted, left, "D-1")))[1] == "AA"
    sidecar.settle()
    with sidecar.db.sessions() as s:
        (encounter,) = s.execute(select(Resource).where(Resource.resource_type == "Encounter")).scalars()
        assert encounter.version == 2
        assert json.loads(encounter.body)["status"] == "finished"
    keys = [e["type"].rsplit(".", 2)[-2:] for e in sidecar.event_bodies()]
    assert ["Encounter", "created"] in keys and ["Encounter", "updated"] in keys
    assert collect(sidecar.db)["jobs"]["done"] == 1
    assert any(e["type"].endswith("summary.discharge.completed") for e in sidecar.event_bodies())
