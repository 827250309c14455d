"""What the auditor page shows, read from the audit log: the chain and checkpoint status,
per-client activity, re-identification requests with their reasons, withheld and blocked
output, and alerts. Plain data for the templates (``sidecar.api_auditor``); no HTTP here.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit.auditevent import EntryView, balp_kind
from audit.entry_hash import entry_digest
from audit.log import ARCHIVED
from audit.search import EntryFilter, find_entries
from core.model_tables import AuditCheckpoint, AuditEntry, AuditHead, AuditPending

__all__ = ["AlertRules", "Dashboard", "Row", "dashboard", "rows_of", "timeline"]

_API_ACTORS = ("api:", "smart:")
_REID = ("patient.reidentified", "patient.reid_refused")
_HELD = ("fhir.withheld", "event.blocked", "summary.failed", "text.screened")


@dataclass(frozen=True)
class AlertRules:
    """``baseline_factor``: an hour with this many times a client's average hour (of the last
    ``baseline_days``) and at least ``min_volume`` entries; ``office_hours``: [start, end) UTC
    hours outside which an API client's access is flagged; ``fan_out``: patients in one entry;
    ``pending_s``: entries not linked into the chain for longer."""

    baseline_factor: float = 3.0
    baseline_days: int = 7
    min_volume: int = 50
    office_hours: tuple[int, int] = (7, 19)
    fan_out: int = 50
    pending_s: float = 60.0


@dataclass(frozen=True)
class Row:
    """One entry as a line of a table (and of the CSV export)."""

    seq: int
    at: str
    client: str
    purpose: str
    source: str
    kind: str
    action: str
    outcome: str
    entity: str
    patients: int
    detail: str

    CSV_HEADER = (
        "seq",
        "at",
        "client",
        "purpose",
        "source",
        "kind",
        "action",
        "outcome",
        "entity",
        "patients",
    )

    def csv(self) -> list[str]:
        return [str(getattr(self, name)) for name in self.CSV_HEADER]


@dataclass
class Dashboard:
    entries: int
    head_seq: int
    pending: int
    checkpoint_size: int | None
    checkpoint_at: str | None
    clients: list[tuple[str, int, int]]  # actor, entries in 24 h, patients named in 24 h
    reidentifications: list[Row]
    withheld: list[Row]
    alerts: list[str] = field(default_factory=list)


def rows_of(entries: list[EntryView]) -> list[Row]:
    out = []
    for e in entries:
        rest = {k: v for k, v in e.detail.items() if k not in ("patients", "purpose", "source")}
        out.append(
            Row(
                e.seq, e.at, e.actor, str(e.detail.get("purpose", "")), str(e.detail.get("source", "")),
                balp_kind(e.action), e.action, e.outcome, e.entity, len(e.patients),
                json.dumps(rest, sort_keys=True, ensure_ascii=False)[:300],
            )
        )  # fmt: skip
    return out


def timeline(
    session: Session, *, patient: str | None = None, actor: str | None = None, limit: int = 500
) -> list[Row]:
    """A patient's (or a client's) entries, newest first."""
    found = EntryFilter(patient=patient, actors=[actor] if actor else [], newest_first=True)
    return rows_of(find_entries(session, found, limit))


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def dashboard(session: Session, rules: AlertRules, *, now: datetime | None = None) -> Dashboard:
    now = now or datetime.now(UTC)
    head = session.get(AuditHead, 1)
    entries = session.execute(select(func.count()).select_from(AuditEntry)).scalar_one()
    pending = session.execute(select(func.count(), func.min(AuditPending.at))).one()
    checkpoint = session.execute(
        select(AuditCheckpoint.size, AuditCheckpoint.at).order_by(AuditCheckpoint.size.desc()).limit(1)
    ).first()
    day = find_entries(session, EntryFilter(at_from=_iso(now - timedelta(days=1)), newest_first=True), 20_000)
    per_client: dict[str, list[int]] = {}
    for e in day:
        counts = per_client.setdefault(e.actor, [0, 0])
        counts[0] += 1
        counts[1] += len(e.patients)
    board = Dashboard(
        entries=entries,
        head_seq=head.seq if head else 0,
        pending=int(pending[0]),
        checkpoint_size=checkpoint.size if checkpoint else None,
        checkpoint_at=checkpoint.at.isoformat(timespec="seconds") if checkpoint else None,
        clients=sorted(((a, c[0], c[1]) for a, c in per_client.items()), key=lambda t: -t[1]),
        reidentifications=rows_of(find_entries(session, EntryFilter(actions=_REID, newest_first=True), 50)),
        withheld=rows_of(find_entries(session, EntryFilter(actions=_HELD, newest_first=True), 50)),
    )
    board.alerts = _alerts(session, rules, now, day, board, pending[1])
    return board


TAIL = 500  # the newest entries re-hashed on every overview (the whole chain: `sidecar audit verify`)


def _tail_broken(session: Session) -> str | None:
    """The first fault among the newest entries: a gap, a broken link, content that does not
    match its hash, a head that does not point at the last one."""
    rows = list(session.execute(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(TAIL)).scalars())
    rows.reverse()
    for before, entry in itertools.pairwise(rows):
        if entry.seq != before.seq + 1 or entry.prev_hash != before.hash:
            return f"entry {entry.seq} does not follow entry {before.seq}"
    for e in rows:
        if (
            e.outcome != ARCHIVED
            and entry_digest(e.seq, e.at, e.actor, e.action, e.outcome, e.entity, e.detail, e.prev_hash)
            != e.hash
        ):
            return f"entry {e.seq} does not match its hash"
    head = session.get(AuditHead, 1)
    if rows and head is not None and (head.seq, head.hash) != (rows[-1].seq, rows[-1].hash):
        return "the chain head does not point at the last entry"
    return None


def _alerts(
    session: Session, rules: AlertRules, now: datetime, day: list[EntryView], board: Dashboard, oldest: Any
) -> list[str]:
    alerts: list[str] = []
    if board.head_seq != board.entries:
        alerts.append(
            f"chain: the head says {board.head_seq} entries, the log holds {board.entries}: "
            "run `sidecar audit verify`"
        )
    if (broken := _tail_broken(session)) is not None:
        alerts.append(f"chain: {broken}: run `sidecar audit verify`")
    if oldest is not None:
        waited = (now - datetime.fromisoformat(str(oldest))).total_seconds()
        if waited > rules.pending_s:
            alerts.append(f"{board.pending} entries wait {waited:.0f} s to be linked into the chain")
    hour_ago = _iso(now - timedelta(hours=1))
    since = _iso(now - timedelta(days=rules.baseline_days))
    baseline = dict(
        session.execute(
            select(AuditEntry.actor, func.count())
            .where(AuditEntry.at >= since, AuditEntry.at < hour_ago)
            .group_by(AuditEntry.actor)
        ).all()
    )
    hours = rules.baseline_days * 24
    start, end = rules.office_hours
    for actor, _count, _patients in board.clients:
        if not actor.startswith(_API_ACTORS):
            continue
        last_hour = sum(1 for e in day if e.actor == actor and e.at >= hour_ago)
        usual = baseline.get(actor, 0) / hours
        if last_hour >= rules.min_volume and last_hour > rules.baseline_factor * max(usual, 1.0):
            alerts.append(f"volume: {actor} made {last_hour} accesses in the last hour (usual {usual:.1f}/h)")
    off_hours = [
        e
        for e in day
        if e.actor.startswith(_API_ACTORS) and not start <= datetime.fromisoformat(e.at).hour < end
    ]
    for actor in sorted({e.actor for e in off_hours}):
        n = sum(1 for e in off_hours if e.actor == actor)
        alerts.append(f"off-hours: {actor} made {n} accesses outside {start:02d}:00-{end:02d}:00 UTC")
    for e in day:
        if e.actor.startswith(_API_ACTORS) and len(e.patients) >= rules.fan_out:
            alerts.append(
                f"fan-out: {e.actor} reached {len(e.patients)} patients in entry {e.seq} ({e.action})"
            )
    return alerts
