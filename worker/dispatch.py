"""Wakes the Celery lanes that have acknowledged inbox entries waiting, in inbox id order.

A relay, like the outbox's: it reads RECEIVED entries above its high-water mark from the
database and sends one task per lane that has new entries; the worker then takes that
lane's backlog from the database in id order, a batch at a time (``worker.runner``),
so a busy worker's queued wake-ups cost nothing and batches grow with the load.
Dispatching from the database rather than from the commit callback keeps arrival order
through a broker outage: nothing newer is sent while an older entry still waits, and
after a restart every lane is woken again (a wake-up with nothing to do is a no-op).

A patient's lane is the same whichever feed names them: HL7 by PID-3 (identifier and
assigning authority), DICOM by Patient ID and Issuer of Patient ID (else the feed's
configured issuer), the pair the pseudonym is made from. So one worker handles all of a
patient's entries in order, and a study's Patient stub never races the admission.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import pydicom
from sqlalchemy import select

from connectors.dicom import CHARSET as DICOM_CHARSET
from connectors.hl7 import peek_header
from connectors.hl7.routing import lane_of, patient_route_key
from core.db import Database
from core.errors import IngestError
from core.tables import InboxEntry, InboxStatus
from mapping.dicom import patient_key

log = logging.getLogger("sidecar.worker.dispatch")

# (lane, newest inbox id of that lane in the round); raises when the broker refuses
SendToLane = Callable[[int, int], None]


def lane_of_entry(raw: bytes, charset: str, lanes: int, dicom_issuer: str = "") -> int:
    """The lane of a stored inbox entry: its patient's, whichever feed it came from."""
    if lanes == 1:
        return 0
    if charset == DICOM_CHARSET:
        return _dicom_lane(raw, lanes, dicom_issuer)
    try:
        return lane_of(patient_route_key(raw, peek_header(raw)), lanes)
    except IngestError:
        return 0  # stored messages always have a header; be safe anyway


def _dicom_lane(raw: bytes, lanes: int, dicom_issuer: str) -> int:
    try:
        ds = pydicom.dcmread(
            io.BytesIO(raw), stop_before_pixels=True, specific_tags=["PatientID", "IssuerOfPatientID"]
        )
        key = patient_key(ds, dicom_issuer)
    except Exception:
        return 0  # unreadable: the pipeline dead-letters it with the reason
    if key is None:
        return 0
    # As patient_route_key builds it from PID-3: authority (upper case) | identifier.
    return lane_of(f"{key.authority.upper()}|{key.value}".encode(), lanes)


class InboxDispatcher:
    def __init__(
        self, db: Database, send: SendToLane, *, lanes: int, batch: int = 500, dicom_issuer: str = ""
    ) -> None:
        self._db = db
        self._send = send
        self._lanes = lanes
        self._batch = batch
        self._dicom_issuer = dicom_issuer  # settings.dicom_issuer_default
        self._high_water = 0

    def lane(self, raw: bytes, charset: str = "") -> int:
        return lane_of_entry(raw, charset, self._lanes, self._dicom_issuer)

    def run_once(self) -> int:
        """Wake the lanes that received entries since the last round: one task per lane,
        however many entries (the worker takes its lane's whole backlog, in order)."""
        with self._db.reads() as session:
            rows = session.execute(
                select(InboxEntry.id, InboxEntry.raw, InboxEntry.charset)
                .where(InboxEntry.status == InboxStatus.RECEIVED, InboxEntry.id > self._high_water)
                .order_by(InboxEntry.id)
                .limit(self._batch)
            ).all()
        newest: dict[int, int] = {}
        for inbox_id, raw, charset in rows:
            newest[self.lane(raw, charset)] = inbox_id
        for lane, inbox_id in sorted(newest.items(), key=lambda item: item[1]):
            self._send(lane, inbox_id)  # a failure stops here: the round is sent again
        if rows:
            self._high_water = rows[-1].id
        return len(rows)

    def rewind(self) -> None:
        """Send everything still RECEIVED again (a task may have been lost)."""
        self._high_water = 0
