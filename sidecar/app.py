"""Wiring: the one place that knows every concrete part (pynetdicom's "wiring from
outside"). Connectors, pipeline, relay and sandbox know only their own interfaces.

Embedded (no broker): MLLP → inbox → in-process pipeline → store/outbox → local bus,
and the sandbox loop runs due summary jobs in-process.
Production (SIDECAR_BROKER_URL): MLLP → inbox → Celery task on RabbitMQ (``sidecar
worker`` runs it), relay → RabbitMQ exchange, summary jobs → ``sidecar sandbox``.
"""

from __future__ import annotations

import logging
import ssl
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import start_http_server
from sqlalchemy import func, select

from audit.checkpoint import load_or_create_key
from audit.checkpointer import Checkpointer
from audit.syslog import SyslogForwarder, SyslogTarget, tls_context
from connectors import InboundMessage, MllpConfig, MllpServer, Receipt
from connectors.dicom import DicomConfig, DicomMetrics, DicomServer
from connectors.files import DropFolder, DropFolderConfig
from connectors.hl7 import CharsetPolicy
from connectors.inbox import DatabaseInbox
from connectors.journal import IntakeJournal, JournaledInbox
from connectors.metrics import IntakeMetrics
from connectors.mllp.server import AckMode
from connectors.mllp.tls import client_context, server_context
from core.children import Children
from core.db import Database
from core.errors import ConfigError
from core.settings import Settings
from core.tables import Job, JobStatus, OutboxEvent
from core.tasks import LANE_TASK, SANDBOX_QUEUE, SUMMARY_TASK, lane_queue, make_celery
from sandbox.runner import due_job_ids, requeue_stalled
from sidecar.api import ApiServer, api_server
from sidecar.api_guard import raise_fd_limit
from sidecar.lifecycle import Part, Parts, loop_part
from sidecar.loops import Loop
from sidecar.relay_process import build_outputs, build_relay, events_publisher, relay_process, relay_round
from sidecar.sandbox_process import sandbox_process
from worker.appacks import AppAckSender
from worker.context import build_context
from worker.dispatch import InboxDispatcher
from worker.pipeline import pending_inbox_ids
from worker.publishers import LocalBus, Publisher
from worker.relay import Relay
from worker.runner import pipeline_processes
from worker.screen import ScreenService

log = logging.getLogger("sidecar.app")

SWEEP_INTERVAL_S = 5.0
CHECKPOINT_ROUND_S = 5.0  # how often the checkpointer looks whether one is due
SYSLOG_ROUND_S = 0.5  # how often the syslog forwarder looks for entries when it has caught up
SWEEP_AGE_S = 10.0
REDISPATCH_AFTER_S = 300.0
STALLED_JOB_S = 120.0  # a summary running this long has lost its sandbox


def charset_policy(settings: Settings) -> CharsetPolicy:
    try:
        return CharsetPolicy(default=settings.charset_default, by_sender=settings.charset_by_sender)
    except ValueError as exc:
        raise ConfigError(f"charset settings: {exc}") from exc


def mllp_config(settings: Settings) -> MllpConfig:
    ssl_context = None
    if settings.tls_cert_file is not None or settings.tls_key_file is not None:
        if settings.tls_cert_file is None or settings.tls_key_file is None:
            raise ConfigError("TLS needs both tls_cert_file and tls_key_file")
        ssl_context = server_context(
            settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
        )
    return MllpConfig(
        host=settings.mllp_host,
        port=settings.mllp_port,
        max_frame_bytes=settings.mllp_max_frame_bytes,
        idle_timeout_s=settings.mllp_idle_timeout_s,
        frame_timeout_s=settings.mllp_frame_timeout_s,
        max_connections=settings.mllp_max_connections,
        max_connections_per_peer=settings.mllp_max_connections_per_peer,
        max_in_flight=settings.mllp_max_in_flight,
        ack_mode=AckMode(settings.mllp_ack_mode),
        allowed_peers=tuple(settings.mllp_allowed_peers),
        allowed_senders=tuple(settings.mllp_allowed_senders),
        ssl_context=ssl_context,
        default_charset=charset_policy(settings).default_for,
    )


def dicom_config(settings: Settings) -> DicomConfig:
    try:
        return DicomConfig(
            ae_title=settings.dicom_ae_title,
            host=settings.dicom_host,
            port=settings.dicom_port or 0,
            allowed_calling_aets=tuple(settings.dicom_allowed_calling_aets),
            allowed_peers=tuple(settings.dicom_allowed_peers),
            max_pdu=settings.dicom_max_pdu,
            max_associations=settings.dicom_max_associations,
            max_connections_per_peer=settings.dicom_max_connections_per_peer,
            acse_timeout_s=settings.dicom_acse_timeout_s,
            network_timeout_s=settings.dicom_network_timeout_s,
            dimse_timeout_s=settings.dicom_dimse_timeout_s,
            max_object_bytes=settings.dicom_max_object_bytes,
            max_element_bytes=settings.dicom_max_element_bytes,
        )
    except ValueError as exc:
        raise ConfigError(f"dicom settings: {exc}") from exc


def app_ack_tls(settings: Settings) -> ssl.SSLContext | None:
    """TLS for application ACK delivery, or None (plain TCP); bad files stop start-up."""
    cert, key = settings.app_ack_tls_cert_file, settings.app_ack_tls_key_file
    if (cert is None) != (key is None):
        raise ConfigError("app_ack_tls_cert_file and app_ack_tls_key_file go together")
    if settings.app_ack_tls_ca_file is None:
        if cert is not None:
            raise ConfigError("app_ack_tls_cert_file needs app_ack_tls_ca_file (TLS to the return path)")
        return None
    try:
        return client_context(settings.app_ack_tls_ca_file, cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"app ACK TLS files: {type(exc).__name__}: {exc}") from exc


class SidecarApp:
    def __init__(self, settings: Settings, *, bus: LocalBus | None = None) -> None:
        self.settings = settings
        # Every descriptor the hard limit allows: the listeners' caps are derived from it,
        # and a flood on one listener must not starve the others (sidecar/api_guard.py).
        raise_fd_limit()
        self.db = Database(settings)
        self.db.migrate()
        self.ctx = build_context(settings, self.db)
        # The relay in a process of its own (sidecar/relay_process.py), unless it must
        # deliver to subscribers of an in-process bus given here (the demo, in-process tests).
        self.relay_process: Children | None = relay_process(settings) if bus is None else None
        self.relay: Relay | None = None  # in this process: a thread (relay_loop)
        self.publisher: Publisher | None = None
        if bus is not None:
            self.publisher = events_publisher(settings, bus)
            self.relay = build_relay(settings, self.ctx, self.publisher)
        # What the model zone hands back is checked and stored in the identified zone, before
        # the relay publishes (sidecar.outputs): the sandbox writes neither resources nor outbox.
        self.outputs = build_outputs(settings, self.ctx)
        self.relay_loop: Loop | None = None
        if self.relay is not None:
            self.relay_loop = Loop("relay", relay_round(self.outputs, self.relay), settings.relay_interval_s)
        # Application ACKs go out from here, the process that faces the senders, whichever
        # process decided them (worker.appacks).
        self.app_ack_loop: Loop | None = None
        if settings.mllp_application_ack_routes:
            sender = AppAckSender(
                self.db,
                max_attempts=settings.app_ack_max_attempts,
                timeout_s=settings.app_ack_timeout_s,
                wait_for_reply=settings.app_ack_wait_for_reply,
                tls=app_ack_tls(settings),
            )
            self.app_ack_loop = Loop("app-acks", sender.run_once, settings.relay_interval_s)
        self.sweeper = Loop("sweeper", self._sweep, SWEEP_INTERVAL_S)
        self.checkpointer = Checkpointer(
            self.db.engine,
            load_or_create_key(settings.audit_key_file),
            every=settings.audit_checkpoint_every,
            interval_s=settings.audit_checkpoint_interval_s,
        )
        self.audit_loops = [Loop("audit-checkpoints", self.checkpointer.run_once, CHECKPOINT_ROUND_S)]
        if settings.audit_syslog_host:
            forwarder = SyslogForwarder(
                self.db.engine,
                SyslogTarget(settings.audit_syslog_host, settings.audit_syslog_port),
                tls_context(
                    settings.audit_syslog_ca_file,
                    settings.audit_syslog_cert_file,
                    settings.audit_syslog_key_file,
                ),
                confirm_s=settings.audit_syslog_confirm_s,
            )
            self.audit_loops.append(Loop("audit-syslog", forwarder.run_once, SYSLOG_ROUND_S))
        self.pipeline: Children | None = None
        self.dispatcher: InboxDispatcher | None = None
        self.sandbox: Children | None = None
        self._celery: Any = None
        self.dispatch_loop: Loop | None = None
        self._last_rewind = time.monotonic()
        if settings.embedded:
            # Processes of their own: the listener keeps its core (worker.runner).
            self.pipeline = pipeline_processes(settings, on_batch=self._after_pipeline)
            # The model zone in a process of its own too (sidecar/sandbox_process.py); its
            # screening requests are answered here, where the vault is.
            screen = ScreenService(self.db, self.ctx.vault, max_per_job=settings.screen_max_per_job)
            self.sandbox = sandbox_process(settings, screen, on_report=self._after_pipeline)
        else:
            self._celery = make_celery(settings, "sidecar-serve")
            self.dispatcher = InboxDispatcher(
                self.db,
                self._send_to_lane,
                lanes=settings.pipeline_lanes,
                dicom_issuer=settings.dicom_issuer_default,
            )
            self.dispatch_loop = Loop("dispatch", self.dispatcher.run_once, settings.relay_interval_s)
        self.api: ApiServer | None = None
        if settings.api_port is not None:
            # Built here, so a missing api_tokens stops start-up before anything listens.
            journal_file = settings.intake_journal_file if settings.effective_mllp_journal else None
            self.api = api_server(settings, self.db, self.ctx.vault, journal_file)
        self.metrics = IntakeMetrics(max_senders=settings.metrics_max_senders)
        if self.api is not None:
            self.api.count_in(self.metrics.registry)
        self.inbox = DatabaseInbox(self.db)
        self.journal: JournaledInbox | None = None
        if settings.effective_mllp_journal:
            self.journal = JournaledInbox(
                IntakeJournal(settings.intake_journal_file),
                self.inbox,
                on_committed=self._on_committed,
                metrics=self.metrics,
                max_backlog=settings.mllp_journal_max_backlog,
            )
        self.server = MllpServer(
            mllp_config(settings),
            self.journal or self.inbox,
            on_committed=self._on_committed,
            metrics=self.metrics,
            commit_inline=self.journal is not None,
        )
        self.dicom: DicomServer | None = None
        if settings.dicom_port is not None:
            self.dicom = DicomServer(
                dicom_config(settings),
                self.inbox,
                on_committed=self._on_committed,
                metrics=DicomMetrics(self.metrics.registry),
            )
        self.drop_folder: DropFolder | None = None
        if settings.drop_dir is not None:
            drop = DropFolderConfig(
                root=settings.drop_dir,
                poll_interval_s=settings.drop_poll_interval_s,
                settle_s=settings.drop_settle_s,
                max_file_bytes=settings.drop_max_file_bytes,
                max_message_bytes=settings.drop_max_message_bytes,
                incomplete_after_s=settings.drop_incomplete_after_s,
                renamed_only=settings.drop_renamed_only,
                default_charset=charset_policy(settings).default_for,
            )
            # The layout exists from start-up, so a team can drop files at once.
            for folder in (drop.incoming, drop.done, drop.failed):
                folder.mkdir(parents=True, exist_ok=True)
            self.drop_folder = DropFolder(
                drop,
                self.inbox,
                on_committed=self._on_committed,
            )
        self.parts = Parts(self._parts())

    def _parts(self) -> list[Part]:
        """Everything `serve` runs, in start order; stopped in reverse (sidecar.lifecycle).
        The audit loops and the relay outlive the pipeline and the model zone, to checkpoint,
        forward and publish what their drain leaves; the journal drains into the inbox
        before the pipeline stops; the listeners start last and stop first."""
        parts = [loop_part(loop.name, loop) for loop in self.audit_loops]
        if self.relay_process is not None:
            parts.append(Part("relay", self.relay_process.start, self.relay_process.stop))
        if self.relay_loop is not None:
            parts.append(loop_part("relay", self.relay_loop))
        if self.app_ack_loop is not None:  # what is still due stays in app_acks for the next start
            parts.append(loop_part("app-acks", self.app_ack_loop, final_round=False))
        if self.sandbox is not None:  # its stop runs what is pending first
            parts.append(Part("sandbox", self.sandbox.start, self.sandbox.stop))
        if self.pipeline is not None:
            parts.append(Part("pipeline", self.pipeline.start, self.pipeline.stop))
        if self.dispatch_loop is not None:  # its final round hands over what the last ACKs stored
            parts.append(loop_part("dispatch", self.dispatch_loop))
        parts.append(loop_part("sweeper", self.sweeper, final_round=False))
        # Entries acknowledged before a crash go first.
        parts.append(Part("sweep", lambda: self._sweep(age_s=0.0), lambda _t: None))
        if self.journal is not None:
            parts.append(Part("journal", self.journal.start, self.journal.stop))
        if self.settings.metrics_port is not None:
            port, host = self.settings.metrics_port, self.settings.metrics_host
            parts.append(
                Part("metrics", lambda: start_http_server(port, host, self.metrics.registry), lambda _t: None)
            )
        if self.api is not None:
            api = self.api
            parts.append(Part("api", api.start, lambda _t: api.stop()))
        parts.append(Part("mllp", self.server.start, self._stop_mllp))
        if self.drop_folder is not None:
            drop_folder = self.drop_folder
            parts.append(Part("drop-folder", drop_folder.start, lambda _t: drop_folder.stop()))
        if self.dicom is not None:
            dicom = self.dicom
            parts.append(Part("dicom", dicom.start, lambda _t: dicom.stop()))
        return parts

    async def _stop_mllp(self, timeout_s: float) -> None:
        await self.server.stop(drain_timeout_s=min(10.0, timeout_s))

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        if self.journal is not None:
            # First: a second process on this data directory stops here, before anything runs.
            self.journal.open()
        await self.parts.start()
        log.info("listening", extra={"port": self.port, "embedded": self.settings.embedded})

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Stop accepting, finish what was acknowledged, publish what was stored."""
        await self.parts.stop(drain_timeout_s)
        if self.publisher is not None:
            self.publisher.close()
        self.inbox.close()
        self.db.dispose()
        log.info("stopped")

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Embedded only: pipeline drained, every summary job run, outbox published."""
        deadline = time.monotonic() + timeout
        if self.journal is not None and not self.journal.wait_moved(timeout):
            return False
        while time.monotonic() < deadline:
            if self.pipeline is None:
                return False
            if pending_inbox_ids(self.db, limit=1):
                time.sleep(0.02)
                continue
            if self.sandbox is not None:
                self.sandbox.wake()
            self.outputs.drain()
            if self.relay is not None:
                self.relay.drain()
            elif self.relay_process is not None:
                self.relay_process.wake()
            if not self._pending_jobs() and not pending_inbox_ids(self.db, limit=1) and not self._unsent():
                return True
            time.sleep(0.05)
        return False

    def _pending_jobs(self) -> int:
        with self.db.reads() as session:
            return session.execute(
                select(func.count()).where(Job.status.in_([JobStatus.PENDING, JobStatus.RUNNING]))
            ).scalar_one()

    # --- wiring callbacks -------------------------------------------------------------

    def _on_committed(self, receipt: Receipt, message: InboundMessage) -> None:
        if receipt.duplicate or receipt.inbox_id is None:
            return
        if self.pipeline is not None:
            self.pipeline.wake()
        elif self.dispatch_loop is not None:
            self.dispatch_loop.wake()

    def _after_pipeline(self, report: dict[str, Any]) -> None:
        if report.get("changed"):
            for relay in (self.relay_process, self.relay_loop):
                if relay is not None:
                    relay.wake()
        if self.app_ack_loop is not None:
            self.app_ack_loop.wake()
        if report.get("jobs") and self.sandbox is not None:
            self.sandbox.wake()

    def _unsent(self) -> int:
        with self.db.reads() as session:
            return session.execute(
                select(func.count()).where(OutboxEvent.sent_at.is_(None), OutboxEvent.blocked_at.is_(None))
            ).scalar_one()

    def _send_to_lane(self, lane: int, up_to: int) -> None:
        self._celery.send_task(LANE_TASK, args=[lane, up_to], queue=lane_queue(lane))

    def _sweep(self, age_s: float = SWEEP_AGE_S) -> int:
        """Re-dispatch inbox entries still RECEIVED after a while (lost dispatch, crash,
        broker outage) and, with Celery, summary jobs overdue. Idempotent by design."""
        self.metrics.inbox_backlog.set(len(pending_inbox_ids(self.db)))
        older_than = datetime.now(UTC) - timedelta(seconds=age_s)
        ids = pending_inbox_ids(self.db, older_than=older_than)
        if self.dispatcher is not None and ids and time.monotonic() - self._last_rewind > REDISPATCH_AFTER_S:
            # Entries dispatched long ago and still waiting: a task may have been lost (it
            # should not: durable queues, persistent messages, late acks). Send again.
            self._last_rewind = time.monotonic()
            self.dispatcher.rewind()
        requeue_stalled(self.db, older_than_s=STALLED_JOB_S)
        if self._celery is not None:
            for job_id in due_job_ids(self.db, now=older_than):
                self._celery.send_task(SUMMARY_TASK, args=[job_id], queue=SANDBOX_QUEUE)
        return 0  # sweeping never needs an immediate second round
