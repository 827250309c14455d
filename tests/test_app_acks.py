"""Application ACKs (enhanced mode, MSH-16) over a configured return path: who gets one,
that it goes out only after the outcome is decided, and that delivery is retried,
dead-lettered and retried again from the dead letter. Real sockets throughout: the
sender's ACK listener is a small MLLP server here that answers each frame with CA."""

from __future__ import annotations

import json
import socket
import socketserver
import ssl
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

import audit
from connectors import MllpClient
from connectors.hl7 import AckCode, MessageHeader, build_ack, peek_header
from connectors.inbox import DatabaseInbox
from connectors.mllp.framing import Frame, FrameReader, encode_frame
from connectors.mllp.tls import client_context, server_context
from core.errors import ConfigError
from core.settings import Settings
from core.tables import AppAck, AppAckStatus, AuditEntry, DeadLetter
from sidecar.app import app_ack_tls
from sidecar.stats import collect
from tests.deployments import Embedded, Production, msa, wait_for
from tests.fixtures.messages import ORU_R01, inbound, with_control_id
from worker.appacks import AppAckPolicy, AppAckSender
from worker.batch import process
from worker.context import build_context
from worker.deadletters import reopen


class AckListener:
    """The sender system's return path: records every frame and answers it with ``answer``
    (None: never answers)."""

    def __init__(
        self, port: int = 0, answer: AckCode | None = AckCode.CA, tls: ssl.SSLContext | None = None
    ) -> None:
        self.received: list[bytes] = []
        self.answer = answer
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                reader = FrameReader(1 << 20)
                while data := self.request.recv(65536):
                    for event in reader.feed(data):
                        if isinstance(event, Frame):
                            owner.received.append(event.payload)
                            if owner.answer is not None:  # None: a system that never answers
                                reply = build_ack(peek_header(event.payload), owner.answer)
                                self.request.sendall(encode_frame(reply))

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True

            def get_request(self) -> tuple[socket.socket, Any]:
                sock, address = super().get_request()
                if tls is None:
                    return sock, address
                try:  # a failed handshake raises here, and the server drops the connection
                    return tls.wrap_socket(sock, server_side=True), address
                except BaseException:
                    sock.close()
                    raise

        self.server = Server(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _message(
    control_id: str, accept: str, application: str, *, sender: str = "LIS", mappable: bool = True
) -> bytes:
    text = with_control_id(ORU_R01, control_id).replace("|LIS|", f"|{sender}|", 1)
    # MSH-15 and MSH-16 sit before MSH-18 (UNICODE UTF-8), which the fixture fills.
    text = text.replace("|2.5.1||||||UNICODE", f"|2.5.1|||{accept}|{application}||UNICODE", 1)
    if not mappable:  # a shifted header: a name where the message type belongs
        text = text.replace("ORU^R01^ORU_R01", "Quimby Harriet^1976", 1)
    return text.encode()


def _field(payload: bytes, segment: str, n: int) -> str:
    for line in payload.decode().split("\r"):
        if line.startswith(segment + "|"):
            fields = line.split("|")
            index = n - 1 if segment == "MSH" else n  # MSH-1 is the separator itself
            return fields[index] if index < len(fields) else ""
    return ""


def test_msh16_decides_and_only_routed_enhanced_senders_get_one() -> None:
    policy = AppAckPolicy({"LIS": "127.0.0.1:2575", "HIS|WARD": "10.0.0.5:2576"})

    def header(application: str, accept: str = "AL", sender: str = "LIS") -> MessageHeader:
        return peek_header(_message("C1", accept, application, sender=sender))

    cases = {
        ("AL", AckCode.AA): True, ("AL", AckCode.AE): True,
        ("ER", AckCode.AA): False, ("ER", AckCode.AE): True, ("ER", AckCode.AR): True,
        ("SU", AckCode.AA): True, ("SU", AckCode.AE): False,
        ("NE", AckCode.AA): False, ("", AckCode.AE): False,
    }  # fmt: skip
    for (application, code), expected in cases.items():
        assert policy.owed(header(application), code) is expected, (application, code)
    assert not AppAckPolicy({"LIS": "h:1"}, original_only=True).owed(header("AL"), AckCode.AA)
    assert policy.route_for(header("AL")) == "127.0.0.1:2575"
    assert policy.route_for(header("AL", sender="OTHER")) is None
    for bad in ("nohost", "host:", "host:99999", ":2575"):
        with pytest.raises(ConfigError):
            AppAckPolicy({"LIS": bad})


@pytest.mark.parametrize("deployment", ["embedded", "postgres+rabbitmq"])
def test_application_acks_follow_the_outcome_over_the_return_path(
    tmp_path: Path, deployment: str, request: pytest.FixtureRequest
) -> None:
    """In production the worker process decides the ACK and `sidecar serve` delivers it."""
    listener = AckListener()
    routes = {"LIS": f"127.0.0.1:{listener.port}"}
    dep: Embedded | Production
    if deployment == "embedded":
        dep = Embedded(tmp_path / "data", mllp_application_ack_routes=routes)
    else:
        dep = Production(
            tmp_path / "data", request.getfixturevalue("pg_url"), request.getfixturevalue("rabbit_vhost")
        )
        dep.env["SIDECAR_MLLP_APPLICATION_ACK_ROUTES"] = json.dumps(routes)
    dep.start()
    try:
        with MllpClient().connect("127.0.0.1", dep.port, timeout=30) as client:
            commit_codes = [
                msa(client.send(m))[1]
                for m in (
                    _message("APP-OK", "AL", "AL"),
                    _message("APP-BAD", "AL", "ER", mappable=False),  # mapping fails: AE
                    _message("APP-NE", "AL", "NE"),
                    _message("APP-ER-OK", "AL", "ER"),  # processed, and only errors asked for
                    _message("APP-NOROUTE", "AL", "AL", sender="OTHERLAB"),
                )
            ]
        dep.settle()
        wait_for(lambda: len(listener.received) >= 2, timeout=30)
        dep.settle()
        stats = collect(dep.db)
        with dep.db.sessions() as s:
            rows = s.execute(select(AppAck.status, AppAck.code)).all()
            sent_audits = [
                json.loads(e.detail)
                for e in s.execute(select(AuditEntry).where(AuditEntry.action == "app-ack.sent")).scalars()
            ]
    finally:
        codes = dep.stop()
        listener.close()
    if isinstance(dep, Production):
        assert codes and codes.get("serve") == 0, f"serve did not drain and exit 0: {codes}\n{dep.logs()}"
    assert commit_codes == ["CA"] * 5  # the connection gets the commit ACK at once
    by_control = {_field(p, "MSA", 2): p for p in listener.received}
    assert sorted(by_control) == ["APP-BAD", "APP-OK"]
    ok, bad = by_control["APP-OK"], by_control["APP-BAD"]
    assert _field(ok, "MSA", 1) == "AA"
    assert _field(bad, "MSA", 1) == "AE" and "MSH-9" in _field(bad, "ERR", 3)
    # Addressed back to the sender, asking for a commit ACK and no application ACK.
    assert (_field(ok, "MSH", 5), _field(ok, "MSH", 15), _field(ok, "MSH", 16)) == ("LIS", "AL", "NE")
    assert sorted(rows) == [(AppAckStatus.SENT, "AA"), (AppAckStatus.SENT, "AE")]
    assert stats["app_acks"] == {"pending": 0, "sent": 2, "failed": 0}
    assert sorted(a["code"] for a in sent_audits) == ["AA", "AE"]
    assert audit.verify(dep.db.engine).ok


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_delivery_is_retried_dead_lettered_and_retried_from_the_dead_letter(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    port = _free_port()  # nothing listens there yet: the sender's system is down
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=request.getfixturevalue("pg_url") if database == "postgresql" else None,
        mllp_application_ack_routes={"LIS": f"127.0.0.1:{port}"},
    )
    ctx = build_context(settings)
    inbox = DatabaseInbox(ctx.db)
    (receipt,) = inbox.commit_many([inbound(_message("RETRY-1", "AL", "AL"))])
    inbox.close()
    assert process(ctx, receipt.inbox_id).outcome == "processed"
    sender = AppAckSender(ctx.db, max_attempts=2, timeout_s=2.0)

    def make_due() -> None:
        with ctx.db.transaction() as s:
            s.execute(update(AppAck).values(due_at=datetime.now(UTC)))

    def row() -> AppAck:
        with ctx.db.sessions() as s:
            found = s.execute(select(AppAck)).scalar_one()
            s.expunge(found)
            return found

    assert sender.run_once() == 0
    first = row()
    assert (first.status, first.attempts) == (AppAckStatus.PENDING, 1)
    assert first.last_error and "Refused" in first.last_error
    assert first.due_at.replace(tzinfo=UTC) > datetime.now(UTC)  # backing off
    make_due()
    assert sender.run_once() == 0
    assert row().status == AppAckStatus.FAILED
    with ctx.db.sessions() as s:
        (letter,) = s.execute(select(DeadLetter)).scalars().all()
        assert (letter.stage, letter.code, letter.inbox_id) == ("app-ack", "undeliverable", receipt.inbox_id)
        letter_id = letter.id

    listener = AckListener(port, answer=AckCode.CE)  # up, but refusing it
    try:
        reopen(ctx.db, letter_id)
        assert sender.run_once() == 0
        assert row().last_error == "answered CE"
        listener.answer = AckCode.CA
        make_due()
        assert sender.run_once() == 1
    finally:
        listener.close()
    done = row()
    assert (done.status, done.attempts) == (AppAckStatus.SENT, 2)
    assert [_field(p, "MSA", 2) for p in listener.received] == ["RETRY-1", "RETRY-1"]
    assert sender.run_once() == 0  # sent once confirmed, never again
    ctx.db.dispose()


def test_a_return_path_that_never_answers_gets_each_ack_once_when_told_not_to_wait(tmp_path: Path) -> None:
    silent = AckListener(answer=None)
    routes = {"LIS": f"127.0.0.1:{silent.port}"}
    settings = Settings(data_dir=tmp_path / "data", mllp_application_ack_routes=routes)
    ctx = build_context(settings)
    inbox = DatabaseInbox(ctx.db)
    receipts = inbox.commit_many([inbound(_message(f"QUIET-{n}", "AL", "AL")) for n in (1, 2)])
    inbox.close()
    for receipt in receipts:
        assert process(ctx, receipt.inbox_id).outcome == "processed"
    try:
        waiting = AppAckSender(ctx.db, timeout_s=0.5)
        assert waiting.run_once() == 0  # no answer within the timeout: not delivered
        with ctx.db.transaction() as s:
            s.execute(update(AppAck).values(due_at=datetime.now(UTC)))
        assert AppAckSender(ctx.db, wait_for_reply=False).run_once() == 2
        wait_for(lambda: len(silent.received) == 3)
    finally:
        silent.close()
    # The first ACK went out once while waiting for an answer, then once more; the second once.
    assert sorted(_field(p, "MSA", 2) for p in silent.received) == ["QUIET-1", "QUIET-1", "QUIET-2"]
    with ctx.db.sessions() as s:
        assert set(s.execute(select(AppAck.status)).scalars()) == {AppAckStatus.SENT}
    ctx.db.dispose()


def test_tls_to_the_return_path_verifies_the_receiver(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    listener = AckListener(tls=server_context(cert, key))
    routes = {"LIS": f"127.0.0.1:{listener.port}"}
    ctx = build_context(Settings(data_dir=tmp_path / "data", mllp_application_ack_routes=routes))
    inbox = DatabaseInbox(ctx.db)
    (receipt,) = inbox.commit_many([inbound(_message("TLS-1", "AL", "AL"))])
    inbox.close()
    assert process(ctx, receipt.inbox_id).outcome == "processed"

    def attempt(tls: ssl.SSLContext | None) -> tuple[int, str | None]:
        with ctx.db.transaction() as s:
            s.execute(update(AppAck).values(due_at=datetime.now(UTC)))
        delivered = AppAckSender(ctx.db, timeout_s=2.0, tls=tls).run_once()
        with ctx.db.sessions() as s:
            return delivered, s.execute(select(AppAck.last_error)).scalar_one()

    try:
        plain, plain_error = attempt(None)  # plain TCP to a TLS listener
        untrusted, untrusted_error = attempt(ssl.create_default_context())  # only the public CAs
        trusted, _ = attempt(client_context(cert))
    finally:
        listener.close()
    assert (plain, untrusted, trusted) == (0, 0, 1)
    assert plain_error and untrusted_error and "CERTIFICATE_VERIFY_FAILED" in untrusted_error
    assert [_field(p, "MSA", 2) for p in listener.received] == ["TLS-1"]
    ctx.db.dispose()


def test_app_ack_tls_settings_that_cannot_work_stop_start_up(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    for wrong in (
        {"app_ack_tls_cert_file": cert},  # a certificate without its key
        {"app_ack_tls_cert_file": cert, "app_ack_tls_key_file": key},  # a client cert, but no TLS
        {"app_ack_tls_ca_file": tmp_path / "missing.pem"},
    ):
        with pytest.raises(ConfigError):
            app_ack_tls(Settings(data_dir=tmp_path / "data", **wrong))  # type: ignore[arg-type]
    assert isinstance(app_ack_tls(Settings(data_dir=tmp_path, app_ack_tls_ca_file=cert)), ssl.SSLContext)
    assert app_ack_tls(Settings(data_dir=tmp_path)) is None
