"""The auditor page's alerts (issue 21): each rule fires on the log it describes and stays
quiet on an ordinary one: a client's volume over its baseline, API access off hours, one
access fanning out to many patients, a tampered entry near the head, entries waiting to be
linked into the chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

import audit
from core.db import Database
from core.settings import Settings
from core.tables import AuditEntry, AuditPending
from sidecar.auditor_views import AlertRules, dashboard

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _db(tmp_path: Path) -> Database:
    db = Database(Settings(data_dir=tmp_path / "data"))
    db.migrate()
    return db


def _read(db: Database, actor: str, at: datetime, patients: list[str], n: int = 1) -> None:
    with db.transaction() as session:
        for _ in range(n):
            audit.append(
                session, actor=actor, action="fhir.read", entity="Patient/p", patients=patients, now=at
            )


def test_an_ordinary_day_raises_no_alert(tmp_path: Path) -> None:
    db = _db(tmp_path)
    for hours in range(1, 24 * 7):
        _read(
            db,
            "api:ward-app",
            NOW - timedelta(hours=hours),
            ["p1"],
            n=5 if 7 <= (12 - hours) % 24 < 19 else 0,
        )
    _read(db, "api:ward-app", NOW - timedelta(minutes=5), ["p1"], n=5)
    with db.sessions() as s:
        assert dashboard(s, AlertRules(), now=NOW).alerts == []


def test_each_rule_fires_on_what_it_watches(tmp_path: Path) -> None:
    db = _db(tmp_path)
    _read(db, "api:night-owl", NOW.replace(hour=3), ["p1"])
    _read(db, "api:bulk", NOW - timedelta(minutes=10), [f"p{i}" for i in range(60)])
    _read(db, "api:burst", NOW - timedelta(minutes=20), ["p2"], n=80)
    with db.transaction() as session:
        waiting = {"actor": "connector:x", "action": "messages.received", "outcome": "success"}
        session.add(
            AuditPending(
                at=(NOW - timedelta(minutes=5)).isoformat(), entity="inbox/1", detail="{}", **waiting
            )
        )
        session.execute(update(AuditEntry).where(AuditEntry.seq == 3).values(entity="Patient/someone-else"))
    with db.sessions() as s:
        alerts = "\n".join(dashboard(s, AlertRules(), now=NOW).alerts)
    assert "off-hours: api:night-owl" in alerts
    assert "fan-out: api:bulk reached 60 patients" in alerts
    assert "volume: api:burst made 80 accesses" in alerts
    assert "entry 3 does not match its hash" in alerts
    assert "1 entries wait 300 s" in alerts
