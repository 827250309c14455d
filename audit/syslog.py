"""Audit entries forwarded to a hospital's audit record repository or SIEM as IHE ATNA
syslog: RFC 5424 messages over TLS (RFC 5425, octet-counted frames), each carrying the
entry's FHIR AuditEvent (BALP, ``audit.auditevent``) as its JSON payload.

The log itself is the spool: a cursor (``audit_cursors``) says how far delivery has gone,
moved only after a batch was written to the collector's socket and flushed. While the
collector is down nothing is lost; when it is back the forwarder catches up from the cursor.
Delivery is at least once (a crash between send and cursor update re-sends a batch); every
message carries the entry's sequence number and hash in its structured data, so the
collector de-duplicates by them.

Written on the ``ssl`` module rather than a logging handler: the standard library's
SysLogHandler speaks neither RFC 5424 nor RFC 5425 framing, and no kept library offers a
spooled, acknowledged-by-cursor sender.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy import select as select_rows

from audit.auditevent import auditevent
from audit.log import ARCHIVED
from audit.search import view_of
from core.model_tables import AuditCursor, AuditEntry

__all__ = ["CURSOR", "SyslogForwarder", "SyslogTarget", "frame", "tls_context"]

log = logging.getLogger("sidecar.audit.syslog")

CURSOR = "syslog"
_FACILITY = 10  # security/authorization messages (RFC 5424 table 1), as ATNA uses
_NOTICE, _WARNING = 5, 4
_SD_ID = "sidecar@32473"  # 32473: the enterprise number RFC 5612 reserves for documentation
_BOM = "\ufeff"


@dataclass(frozen=True)
class SyslogTarget:
    host: str
    port: int = 6514
    app_name: str = "hl7-fhir-sidecar"
    hostname: str = socket.gethostname()[:255] or "-"
    timeout_s: float = 10.0


def tls_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    """TLS 1.2+ to the collector, its certificate checked against ``ca_file`` (default: the
    system's); ``cert_file``/``key_file``: this node's certificate (ATNA node authentication)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


def _sd_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def frame(target: SyslogTarget, entry: AuditEntry, event: dict[str, Any]) -> bytes:
    """One RFC 5425 frame: "MSG-LEN SP" and the RFC 5424 message (MSGID IHE+FHIR)."""
    severity = _NOTICE if entry.outcome == "success" else _WARNING
    sd = f'[{_SD_ID} seq="{entry.seq}" hash="{entry.hash}" action="{_sd_value(entry.action)}"]'
    header = f"<{_FACILITY * 8 + severity}>1 {entry.at} {target.hostname} {target.app_name} - IHE+FHIR {sd} "
    message = (header + _BOM + json.dumps(event, separators=(",", ":"), ensure_ascii=False)).encode()
    return str(len(message)).encode() + b" " + message


class SyslogForwarder:
    """``run_once`` is a round for ``sidecar.loops.Loop``: send what is past the cursor.

    TCP takes bytes into a socket buffer whether or not the collector will read them: a
    collector stopping just after a send loses what it had not read, and the sender cannot
    tell. So the cursor trails: a batch counts as delivered only after the connection has
    stayed up ``confirm_s`` seconds past its sending; when the connection drops, everything
    after the cursor is sent again on the next one (the collector drops the copies by seq).
    """

    def __init__(
        self,
        engine: Engine,
        target: SyslogTarget,
        context: ssl.SSLContext,
        *,
        batch: int = 500,
        confirm_s: float = 5.0,
        connect: Callable[[], socket.socket] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine, self._target, self._context, self._batch = engine, target, context, batch
        self._confirm_s, self._clock = confirm_s, clock
        self._connect = connect or self._open
        self._sock: socket.socket | None = None
        self._sent_up_to: int | None = None  # on the current connection
        self._in_flight: list[tuple[float, int]] = []  # (sent at, last seq), oldest first
        # The stored cursor, read once: only this forwarder (of the one `serve`) moves it, so a
        # round that has nothing to confirm writes nothing.
        self._cursor: int | None = None
        self.sent = 0

    def _open(self) -> socket.socket:
        raw = socket.create_connection((self._target.host, self._target.port), timeout=self._target.timeout_s)
        try:
            return self._context.wrap_socket(raw, server_hostname=self._target.host)
        except Exception:
            raw.close()
            raise

    def _stored_cursor(self) -> int:
        if self._cursor is None:
            with self._engine.connect() as connection:
                seq = connection.execute(
                    select_rows(AuditCursor.seq).where(AuditCursor.name == CURSOR)
                ).scalar()
            self._cursor = int(seq or 0)
        return self._cursor

    def _alive(self) -> bool:
        """The collector never writes to us: a readable socket means it closed (or failed)."""
        if self._sock is None:
            return False
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def run_once(self) -> int:
        """Confirm what has been up long enough, then send one batch; returns how many were
        sent. A collector that cannot be reached raises (the loop retries, slower)."""
        cursor = self._stored_cursor()
        if self._sock is not None and not self._alive():
            self.close()
        if self._sock is not None:
            cursor = self._confirm(cursor)
        after = cursor if self._sent_up_to is None else self._sent_up_to
        with self._engine.connect() as connection:
            rows = list(
                connection.execute(
                    select_rows(AuditEntry)
                    .where(AuditEntry.seq > after, AuditEntry.outcome != ARCHIVED)
                    .order_by(AuditEntry.seq)
                    .limit(self._batch)
                ).all()
            )
        if not rows:
            return 0
        entries = [AuditEntry(**row._mapping) for row in rows]
        frames = b"".join(frame(self._target, e, auditevent(view_of(e))) for e in entries)
        try:
            if self._sock is None:
                self._sock = self._connect()
            self._sock.sendall(frames)
        except OSError:
            self.close()
            raise
        self._sent_up_to = entries[-1].seq
        self._in_flight.append((self._clock(), entries[-1].seq))
        self.sent += len(entries)
        return len(entries)

    def _confirm(self, cursor: int) -> int:
        """Move the cursor past the batches sent at least ``confirm_s`` ago on this live connection."""
        due = self._clock() - self._confirm_s
        confirmed = [seq for at, seq in self._in_flight if at <= due]
        if not confirmed:
            return cursor
        self._in_flight = [(at, seq) for at, seq in self._in_flight if at > due]
        with self._engine.begin() as connection:
            moved = connection.execute(
                update(AuditCursor).where(AuditCursor.name == CURSOR).values(seq=confirmed[-1])
            )
            if not moved.rowcount:  # the first confirmation of this log
                connection.execute(AuditCursor.__table__.insert(), {"name": CURSOR, "seq": confirmed[-1]})  # type: ignore[attr-defined]
        self._cursor = confirmed[-1]
        return confirmed[-1]

    def close(self) -> None:
        """Drop the connection; what it carried unconfirmed is sent again on the next one."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        self._sent_up_to = None
        self._in_flight = []
