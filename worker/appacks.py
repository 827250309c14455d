"""Application acknowledgements (HL7 enhanced mode, MSH-16): owed, written, delivered.

A sender in enhanced mode gets its commit ACK (CA/CE/CR) on the connection as soon as the
message is durable; the application ACK (AA/AE/AR) can only come once the message went
through the pipeline or was dead-lettered, and it goes back over the sender's own return
path: an MLLP listener of the sender's system, configured per sender
(``mllp_application_ack_routes``). Without a route, or when MSH-16 does not ask for it, no
application ACK is sent at all; this is still the only thing the sidecar ever sends to a
source system, and it is an acknowledgement.

``owe`` writes the ACK in the transaction that decides the message's outcome (an outbox,
as events have), so a crash can neither lose it nor send it for an outcome that was rolled
back. ``AppAckSender`` delivers what is due from the listener's process and waits for the
sender's commit ACK of it (our ACK asks for one in its MSH-15), so "sent" means received;
``app_ack_wait_for_reply = false`` is for return paths that never acknowledge an ACK.
A failed delivery is retried with backoff; after ``max_attempts`` it becomes a dead letter
with the reason, and ``sidecar dead-letters retry`` puts it back in line.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

import audit
from connectors.hl7 import AckCode, ack_code, build_ack, peek_header
from connectors.hl7.header import MessageHeader
from connectors.hl7.senders import SenderKey, for_sender, sender_key
from connectors.mllp.client import MllpClient
from connectors.mllp.framing import encode_frame
from core.db import Database
from core.errors import ConfigError, FramingError
from core.tables import AppAck, AppAckStatus, DeadLetter

log = logging.getLogger("sidecar.worker.appacks")

_MAX_BACKOFF_S = 300.0
_ACTOR = "connector:mllp"


@dataclass(frozen=True)
class AppAckPolicy:
    """Who gets application ACKs, and where. ``routes`` keys are ``"APP"`` or
    ``"APP|FACILITY"``, matched like ``charset_by_sender`` (``connectors.hl7.senders``);
    values are ``host:port``. ``original_only``: the listener answers every message in
    original mode (``mllp_ack_mode = "original"``), where the AA/AE on the connection is
    the only ACK."""

    routes: Mapping[str, str] = field(default_factory=dict, hash=False)
    original_only: bool = False
    _lookup: dict[SenderKey, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key, route in self.routes.items():
            host, _, port = route.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"mllp_application_ack_routes: {key!r} needs a route like 'host:2575'")
            try:
                self._lookup[sender_key(key, "mllp_application_ack_routes")] = route
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc

    def route_for(self, header: MessageHeader) -> str | None:
        return for_sender(self._lookup, header)

    def owed(self, header: MessageHeader, code: AckCode) -> bool:
        """MSH-16 decides (HL7 table 0155): AL always, ER on error or reject only, SU on
        success only, NE or empty never. Original mode (MSH-15 and -16 both empty, or
        forced) has no application ACK of its own."""
        if self.original_only:
            return False
        wanted = header.application_ack_type.strip().upper()
        if wanted == "AL":
            return True
        if wanted == "ER":
            return code is not AckCode.AA
        if wanted == "SU":
            return code is AckCode.AA
        return False


def owe(
    session: Session,
    policy: AppAckPolicy | None,
    inbox_id: int,
    raw: bytes,
    source: str,
    code: AckCode,
    *,
    now: datetime,
    error: str | None = None,
    error_code: str = "207",
) -> bool:
    """Write the application ACK for this outcome, in the caller's transaction, if one is
    owed; a message processed again (a retried dead letter) replaces the one it had."""
    if policy is None or not policy.routes or source != "mllp":
        return False
    header = peek_header(raw)  # it was read once already: the listener ACKed it
    route = policy.route_for(header)
    if route is None or not policy.owed(header, code):
        return False
    payload = build_ack(header, code, error=error, error_code=error_code, now=now, accept_ack_type="AL")
    row = session.execute(
        select(AppAck).where(AppAck.inbox_id == inbox_id).with_for_update()
    ).scalar_one_or_none()
    if row is None:
        session.add(
            AppAck(
                inbox_id=inbox_id,
                code=str(code),
                route=route,
                payload=payload,
                status=AppAckStatus.PENDING,
                attempts=0,
                due_at=now,
                created_at=now,
            )
        )
    else:
        row.code, row.route, row.payload = str(code), route, payload
        row.status, row.attempts, row.due_at, row.sent_at, row.last_error = (
            AppAckStatus.PENDING, 0, now, None, None,
        )  # fmt: skip
    return True


class AppAckSender:
    """Delivers due application ACKs, oldest first. Runs in the listener's process (one
    loop thread); the database is the queue, so any number of workers may write to it."""

    def __init__(
        self,
        db: Database,
        *,
        max_attempts: int = 10,
        timeout_s: float = 10.0,
        wait_for_reply: bool = True,
        tls: ssl.SSLContext | None = None,
        batch_size: int = 50,
    ) -> None:
        self._db = db
        self._max_attempts = max_attempts
        self._timeout_s = timeout_s
        self._wait_for_reply = wait_for_reply
        self._tls = tls
        self._batch_size = batch_size

    def run_once(self) -> int:
        """One round; returns how many were delivered. A route that failed is not tried
        again in the same round (its system is down: the rest would only wait out timeouts)."""
        now = datetime.now(UTC)
        with self._db.sessions() as session:
            due = session.execute(
                select(AppAck.id, AppAck.route, AppAck.payload)
                .where(AppAck.status == AppAckStatus.PENDING, AppAck.due_at <= now)
                .order_by(AppAck.id)
                .limit(self._batch_size)
            ).all()
        delivered = 0
        down: set[str] = set()
        for ack_id, route, payload in due:
            if route in down:
                continue
            # No transaction is held while the network is waited on.
            problem = self._deliver(route, payload)
            if problem is None:
                delivered += self._record_sent(ack_id)
            else:
                down.add(route)
                self._record_failure(ack_id, problem)
        return delivered

    def _deliver(self, route: str, payload: bytes) -> str | None:
        """None when the sender's system confirmed it (CA, or AA from a system that answers
        in original mode); else what went wrong, without data values."""
        host, _, port = route.rpartition(":")
        client = MllpClient()
        try:
            client.connect(host, int(port), timeout=self._timeout_s, tls=self._tls)
            if not self._wait_for_reply:
                client.send_raw(encode_frame(payload))
                return None
            reply = client.send(payload)
        except (OSError, FramingError) as exc:  # refused, reset, timed out, garbled
            return f"{type(exc).__name__}: {exc}"[:200]
        finally:
            client.close()
        answer = ack_code(reply)
        return None if answer in ("CA", "AA") else f"answered {answer or 'without an MSA'}"

    def _record_sent(self, ack_id: int) -> int:
        now = datetime.now(UTC)
        with self._db.transaction() as session:
            row = session.get(AppAck, ack_id, with_for_update=True)
            if row is None or row.status != AppAckStatus.PENDING:
                return 0
            row.status, row.sent_at, row.attempts = AppAckStatus.SENT, now, row.attempts + 1
            audit.append(
                session,
                actor=_ACTOR,
                action="app-ack.sent",
                entity=f"inbox/{row.inbox_id}",
                detail={"code": row.code, "route": row.route, "attempts": row.attempts},
                now=now,
            )
        return 1

    def _record_failure(self, ack_id: int, problem: str) -> None:
        now = datetime.now(UTC)
        with self._db.transaction() as session:
            row = session.get(AppAck, ack_id, with_for_update=True)
            if row is None or row.status != AppAckStatus.PENDING:
                return
            row.attempts += 1
            row.last_error = problem
            if row.attempts < self._max_attempts:
                row.due_at = now + timedelta(seconds=min(_MAX_BACKOFF_S, 2.0 ** (row.attempts - 1)))
                log.warning(
                    "application ack not delivered",
                    extra={"event": "app_ack.retry", "inbox_id": row.inbox_id, "attempts": row.attempts},
                )
                return
            row.status = AppAckStatus.FAILED
            letter = DeadLetter(
                inbox_id=row.inbox_id, stage="app-ack", code="undeliverable", reason=problem, created_at=now
            )
            session.add(letter)
            session.flush()
            audit.append(
                session,
                actor=_ACTOR,
                action="app-ack.dead-lettered",
                entity=f"inbox/{row.inbox_id}",
                outcome=audit.Outcome.FAILURE,
                detail={
                    "code": row.code,
                    "route": row.route,
                    "attempts": row.attempts,
                    "dead_letter": letter.id,
                },
                now=now,
            )
        log.error(
            "application ack dead-lettered",
            extra={"event": "app_ack.dead_lettered", "inbox_id": row.inbox_id},
        )
