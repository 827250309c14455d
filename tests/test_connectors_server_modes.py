"""ACK modes, allow-lists, pipelining with group commit, TLS — over real sockets."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from connectors.mllp.framing import FrameReader, encode_frame
from connectors.mllp.server import AckMode, MllpConfig, MllpServer
from connectors.mllp.tls import server_context
from tests.test_connectors_server import (
    MemorySink,
    ServerThread,
    assert_closed_by_server,
    hl7,
    msa,
    running,
)


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


def with_ack_types(message: bytes, accept: str, application: str = "") -> bytes:
    msh, rest = message.split(b"\r", 1)
    fields = msh.split(b"|")
    fields += [b""] * (17 - len(fields))
    fields[14], fields[15] = accept.encode(), application.encode()
    return b"|".join(fields) + b"\r" + rest


@pytest.mark.parametrize(
    ("accept", "expected"),
    [("AL", "CA"), ("SU", "CA"), ("", "CA")],
)
def test_enhanced_mode_answers_commit_acks(sink: MemorySink, accept: str, expected: str) -> None:
    message = with_ack_types(hl7("ENH1"), accept, "AL")  # MSH-16 valued: enhanced mode
    with running(sink) as srv, srv.client() as client:
        fields = msa(client.send(message))
    assert fields[1:3] == [expected, "ENH1"]
    assert len(sink.committed) == 1


@pytest.mark.parametrize("accept", ["NE", "ER"])
def test_enhanced_mode_never_and_error_only_send_no_ack_on_success(sink: MemorySink, accept: str) -> None:
    with running(sink) as srv, srv.client() as client:
        client.send_raw(encode_frame(with_ack_types(hl7("QUIET"), accept)))
        # The next message (original mode) is answered; nothing came for the first one.
        assert msa(client.send(hl7("LOUD")))[1:3] == ["AA", "LOUD"]
    assert [m.header.control_id for m in sink.committed] == ["QUIET", "LOUD"]


def test_enhanced_mode_commit_error_is_ce_and_never_positive(sink: MemorySink) -> None:
    sink.fail_commit = True
    with running(sink) as srv, srv.client() as client:
        fields = msa(client.send(with_ack_types(hl7("ERR1"), "ER")))
    assert fields[1:3] == ["CE", "ERR1"]


def test_forced_original_mode_answers_aa_to_enhanced_headers(sink: MemorySink) -> None:
    config = MllpConfig(port=0, ack_mode=AckMode.ORIGINAL)
    with running(sink, config) as srv, srv.client() as client:
        assert msa(client.send(with_ack_types(hl7("ORIG"), "NE", "NE")))[1:3] == ["AA", "ORIG"]


def test_sender_allow_list_rejects_and_stores_nothing(sink: MemorySink) -> None:
    config = MllpConfig(port=0, allowed_senders=("his",))  # hl7() is sent by LAB
    with running(sink, config) as srv, srv.client() as client:
        reply = client.send(hl7("DENIED"))
    assert msa(reply)[1:3] == ["AR", "DENIED"]
    assert b"not allowed" in reply
    assert sink.committed == [] and sink.rejected == []


def test_peer_allow_list_closes_other_addresses(sink: MemorySink) -> None:
    denied = MllpConfig(port=0, allowed_peers=("10.0.0.0/8",))
    with running(sink, denied) as srv, srv.client() as client:
        assert_closed_by_server(client)
    allowed = MllpConfig(port=0, allowed_peers=("127.0.0.0/8", "::1"))
    with running(sink, allowed) as srv, srv.client() as client:
        assert msa(client.send(hl7("OK")))[1] == "AA"


def _read_acks(sock: socket.socket, count: int) -> list[bytes]:
    reader = FrameReader(1 << 20)
    acks: list[bytes] = []
    while len(acks) < count:
        data = sock.recv(65536)
        assert data, "connection closed early"
        acks += [e.payload for e in reader.feed(data) if hasattr(e, "payload")]
    return acks


def test_a_pipelining_sender_gets_every_ack_in_order_and_shares_commits(sink: MemorySink) -> None:
    n = 300
    with running(sink) as srv, socket.create_connection(("127.0.0.1", srv.server.port), timeout=30) as sock:
        sink.release_commit.clear()  # hold the first commit so the rest queue up behind it
        sock.sendall(b"".join(encode_frame(hl7(f"P{i:04d}")) for i in range(n)))
        assert sink.commit_started.wait(10)
        sink.release_commit.set()
        acks = _read_acks(sock, n)
        committer = srv.server._committer
    assert [msa(a)[2] for a in acks] == [f"P{i:04d}" for i in range(n)]
    assert {msa(a)[1] for a in acks} == {"AA"}
    assert len(sink.committed) == n
    assert committer.batches < n / 10  # messages shared commits


def test_tls_listener(sink: MemorySink, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    srv = ServerThread(MllpServer(MllpConfig(port=0, ssl_context=server_context(cert, key)), sink))
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        with (
            socket.create_connection(("127.0.0.1", srv.server.port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(encode_frame(hl7("TLS1")))
            (ack,) = _read_acks(tls, 1)
        assert msa(ack)[1:3] == ["AA", "TLS1"]
        # A plaintext MLLP client gets nothing stored and no ACK.
        with socket.create_connection(("127.0.0.1", srv.server.port), timeout=10) as plain:
            plain.sendall(encode_frame(hl7("PLAIN")))
            plain.settimeout(5)
            try:
                data = plain.recv(4096)
            except (ConnectionError, TimeoutError):
                data = b""
            assert b"MSA" not in data
        assert [m.header.control_id for m in sink.committed] == ["TLS1"]
    finally:
        srv.close()
