"""Hands acknowledged inbox entries to the Celery lanes, in inbox id order.

A relay, like the outbox's: it reads RECEIVED entries above its high-water mark from the
database and sends each to its patient's lane. Dispatching from the database rather than
from the commit callback keeps arrival order through a broker outage: nothing newer is
sent while an older entry still waits, and after a restart everything not yet processed
is sent again (a second copy is a no-op: the pipeline skips processed entries).

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

SendToLane = Callable[[int, int], None]  # (inbox_id, lane); raises when the broker refuses


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
        if charset == DICOM_CHARSET:
            return self._dicom_lane(raw)
        try:
            return lane_of(patient_route_key(raw, peek_header(raw)), self._lanes)
        except IngestError:
            return 0  # stored messages always have a header; be safe anyway

    def _dicom_lane(self, raw: bytes) -> int:
        try:
            ds = pydicom.dcmread(
                io.BytesIO(raw), stop_before_pixels=True, specific_tags=["PatientID", "IssuerOfPatientID"]
            )
            key = patient_key(ds, self._dicom_issuer)
        except Exception:
            return 0  # unreadable: the pipeline dead-letters it with the reason
        if key is None:
            return 0
        # As patient_route_key builds it from PID-3: authority (upper case) | identifier.
        return lane_of(f"{key.authority.upper()}|{key.value}".encode(), self._lanes)

    def run_once(self) -> int:
        with self._db.sessions() as session:
            rows = session.execute(
                select(InboxEntry.id, InboxEntry.raw, InboxEntry.charset)
                .where(InboxEntry.status == InboxStatus.RECEIVED, InboxEntry.id > self._high_water)
                .order_by(InboxEntry.id)
                .limit(self._batch)
            ).all()
        for inbox_id, raw, charset in rows:
            self._send(inbox_id, self.lane(raw, charset))  # a failure stops here: order is kept
            self._high_water = inbox_id
        return len(rows)

    def rewind(self) -> None:
        """Send everything still RECEIVED again (a task may have been lost)."""
        self._high_water = 0
