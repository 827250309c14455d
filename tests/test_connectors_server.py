"""The MLLP listener over real loopback sockets.

The server runs on its own event loop in a background thread; tests talk to it with the
blocking MllpClient. Synchronisation is by ACKs and threading.Events, never by sleeping.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.base import InboundMessage, Receipt, Rejected
from connectors.hl7.header import peek_header
from connectors.mllp.client import MllpClient
from connectors.mllp.framing import encode_frame
from connectors.mllp.server import NOT_STORED, AckMode, MllpConfig, MllpServer
from tests.fixtures.logs import Records, captured

pytestmark = pytest.mark.timeout(60)

PATIENT = "DOE^JANE"


def hl7(control_id: str = "CTRL0001", body: str = f"PID|1||12345^^^HOSP^MR||{PATIENT}||19700101|F") -> bytes:
    return (
        f"MSH|^~\\&|LAB^1.2.3^ISO|LABFAC|SIDECAR|HOSP|20240101120000||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r"
        f"{body}\rOBX|1|NM|GLU||5.4|mmol/L\r"
    ).encode()


def msa(ack: bytes) -> list[str]:
    segments = {s[:3]: s for s in ack.decode("latin-1").split("\r") if s}
    return segments["MSA"].split("|")


class MemorySink:
    def __init__(self) -> None:
        self.committed: list[InboundMessage] = []
        self.rejected: list[Rejected] = []
        self.fail_commit = False
        self.fail_quarantine = False
        self.commit_started = threading.Event()
        self.release_commit = threading.Event()
        self.release_commit.set()
        self._lock = threading.Lock()

    def commit(self, message: InboundMessage) -> Receipt:
        self.commit_started.set()
        assert self.release_commit.wait(timeout=30)
        if self.fail_commit:
            raise RuntimeError(f"database down; parameters: {message.raw!r}")
        with self._lock:
            for index, seen in enumerate(self.committed):
                if (seen.header.sender, seen.header.control_id) == (
                    message.header.sender,
                    message.header.control_id,
                ):
                    return Receipt(index + 1, duplicate=True)
            self.committed.append(message)
            return Receipt(len(self.committed), duplicate=False)

    def commit_many(self, messages: Sequence[InboundMessage]) -> list[Receipt]:
        return [self.commit(m) for m in messages]

    def quarantine(self, item: Rejected) -> int:
        if self.fail_quarantine:
            raise RuntimeError("database down")
        with self._lock:
            self.rejected.append(item)
            return len(self.rejected)


class ServerThread:
    def __init__(self, server: MllpServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(server.start())

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.submit(coro).result(timeout=30)

    def client(self, timeout: float = 10.0) -> MllpClient:
        return MllpClient().connect("127.0.0.1", self.server.port, timeout=timeout)

    def close(self) -> None:
        self.call(self.server.stop(drain_timeout_s=5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def records() -> Iterator[Records]:
    with captured("sidecar.connectors.mllp") as handler:
        yield handler


@contextmanager
def running(sink: MemorySink, config: MllpConfig | None = None, **kwargs: Any) -> Iterator[ServerThread]:
    harness = ServerThread(MllpServer(config or MllpConfig(port=0), sink, **kwargs))
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


def assert_closed_by_server(client: MllpClient) -> None:
    with pytest.raises(ConnectionError):
        client.receive()


def test_valid_message_is_committed_then_accepted(sink: MemorySink, records: Records) -> None:
    seen: list[tuple[Receipt, InboundMessage]] = []
    raw = hl7()
    with running(sink, on_committed=lambda r, m: seen.append((r, m))) as srv, srv.client() as client:
        ack = client.send(raw)
        local_port = client._socket().getsockname()[1]

    assert msa(ack) == ["MSA", "AA", "CTRL0001"]
    [message] = sink.committed
    assert message.raw == raw
    assert message.header.control_id == "CTRL0001"
    assert (message.charset, message.repaired, message.source) == ("utf-8", False, "mllp")
    assert message.peer == f"127.0.0.1:{local_port}"
    assert message.received_at.tzinfo is UTC
    assert seen == [(Receipt(1, duplicate=False), message)]
    # Logs identify the flow but never carry content.
    assert "mllp.committed" in records.events()
    for record in records.records:
        assert PATIENT not in str(record.__dict__)
        assert "12345" not in str(record.__dict__)


def test_resend_is_acknowledged_again(sink: MemorySink) -> None:
    receipts: list[Receipt] = []
    with running(sink, on_committed=lambda r, m: receipts.append(r)) as srv, srv.client() as client:
        assert msa(client.send(hl7()))[1] == "AA"
        assert msa(client.send(hl7())) == ["MSA", "AA", "CTRL0001"]
    assert receipts == [Receipt(1, False), Receipt(1, True)]
    assert len(sink.committed) == 1


def test_garbage_is_rejected_and_the_connection_keeps_working(sink: MemorySink) -> None:
    with running(sink) as srv, srv.client() as client:
        ack = client.send(b"this is not HL7 at all")
        assert msa(ack) == ["MSA", "AR", "", "does not start with an MSH segment"]
        assert "\rERR|||100^does not start with an MSH segment^HL70357|E\r" in ack.decode()
        assert msa(client.send(hl7()))[:3] == ["MSA", "AA", "CTRL0001"]

    [rejected] = sink.rejected
    assert (rejected.raw, rejected.code, rejected.source) == (b"this is not HL7 at all", "bad-header", "mllp")
    assert rejected.reason == "does not start with an MSH segment"
    assert len(sink.committed) == 1


def test_message_without_control_id_is_rejected(sink: MemorySink) -> None:
    with running(sink) as srv, srv.client() as client:
        ack = client.send(hl7(control_id=""))
    assert msa(ack) == ["MSA", "AR", "", "MSH-10 (control id) is empty"]
    assert "ERR|||101^" in ack.decode()
    assert sink.rejected[0].reason == "MSH-10 (control id) is empty"


def test_quarantine_failure_still_rejects(sink: MemorySink, records: Records) -> None:
    sink.fail_quarantine = True
    with running(sink) as srv, srv.client() as client:
        assert msa(client.send(b"junk"))[1] == "AR"
        assert msa(client.send(hl7()))[1] == "AA"
    assert "mllp.quarantine_failed" in records.events()


def test_commit_failure_is_never_accepted(sink: MemorySink, records: Records) -> None:
    sink.fail_commit = True
    notified: list[Receipt] = []
    with running(sink, on_committed=lambda r, m: notified.append(r)) as srv, srv.client() as client:
        ack = client.send(hl7())
        assert msa(ack) == ["MSA", "AE", "CTRL0001", NOT_STORED]
        assert f"ERR|||207^{NOT_STORED}^HL70357|E" in ack.decode()
        sink.fail_commit = False
        assert msa(client.send(hl7()))[1] == "AA"
    assert len(notified) == 1
    failed = [r for r in records.records if getattr(r, "event", "") == "mllp.commit_failed"]
    assert failed and failed[0].error == "RuntimeError"  # type: ignore[attr-defined]
    for record in records.records:
        assert PATIENT not in str(record.__dict__)


def test_failing_listener_does_not_change_the_ack(sink: MemorySink, records: Records) -> None:
    def explode(receipt: Receipt, message: InboundMessage) -> None:
        raise ValueError("listener bug")

    with running(sink, on_committed=explode) as srv, srv.client() as client:
        assert msa(client.send(hl7()))[1] == "AA"
    assert "mllp.notify_failed" in records.events()


def test_oversized_frame_is_rejected_and_the_connection_keeps_working(sink: MemorySink) -> None:
    config = MllpConfig(port=0, max_frame_bytes=512)
    big = hl7(control_id="BIG1", body="NTE|1||" + "x" * 2000)
    with running(sink, config) as srv, srv.client() as client:
        ack = client.send(big)
        assert msa(ack)[:3] == ["MSA", "AR", "BIG1"]  # the head still names the message
        assert "ERR|||" in ack.decode()
        assert msa(client.send(b"y" * 5000))[:3] == ["MSA", "AR", ""]
        assert msa(client.send(hl7()))[1] == "AA"

    assert [r.code for r in sink.rejected] == ["oversized", "oversized"]
    assert sink.rejected[0].raw == big[:512]
    assert sink.rejected[1].raw == b"y" * 512


def test_junk_between_frames_is_skipped(sink: MemorySink, records: Records) -> None:
    with running(sink) as srv, srv.client() as client:
        client.send_raw(b"noise noise")
        assert msa(client.send(hl7()))[1] == "AA"
    assert "mllp.framing" in records.events()
    assert sink.rejected == []


def test_abandoned_frame_gets_no_ack_of_its_own(sink: MemorySink) -> None:
    with running(sink) as srv, srv.client() as client:
        client.send_raw(b"\x0b" + hl7(control_id="HALF")[:40])
        # The first reply must answer the second message, not the abandoned one.
        assert msa(client.send(hl7(control_id="WHOLE")))[:3] == ["MSA", "AA", "WHOLE"]
    [rejected] = sink.rejected
    assert rejected.code == "nested-start"
    assert [m.header.control_id for m in sink.committed] == ["WHOLE"]


def test_frames_split_across_writes_and_pipelined(sink: MemorySink) -> None:
    stream = encode_frame(hl7("A")) + encode_frame(hl7("B"))
    with running(sink) as srv, srv.client() as client:
        for i in range(0, len(stream), 7):
            client.send_raw(stream[i : i + 7])
        assert msa(client.receive())[2] == "A"
        assert msa(client.receive())[2] == "B"


def test_half_closed_sender_still_gets_its_ack(sink: MemorySink) -> None:
    with running(sink) as srv, srv.client() as client:
        client.send_raw(encode_frame(hl7()))
        client._socket().shutdown(socket.SHUT_WR)
        assert msa(client.receive())[1] == "AA"
        assert_closed_by_server(client)


def test_idle_connection_is_closed(sink: MemorySink, records: Records) -> None:
    config = MllpConfig(port=0, idle_timeout_s=0.2)
    with running(sink, config) as srv, srv.client() as client:
        assert msa(client.send(hl7()))[1] == "AA"
        assert_closed_by_server(client)
    assert "mllp.idle" in records.events()


def test_connections_over_the_limit_are_closed(sink: MemorySink) -> None:
    config = MllpConfig(port=0, max_connections=1)
    with running(sink, config) as srv, srv.client() as first:
        assert msa(first.send(hl7("1")))[1] == "AA"  # the first connection is registered
        with srv.client() as second:
            assert_closed_by_server(second)
        assert msa(first.send(hl7("2")))[1] == "AA"
    # Once the first has gone, a new one is served.
    with running(sink, config) as srv, srv.client() as again:
        assert msa(again.send(hl7("3")))[1] == "AA"


def test_stop_drains_a_commit_in_progress(sink: MemorySink) -> None:
    srv = ServerThread(MllpServer(MllpConfig(port=0), sink))
    port = srv.server.port
    with srv.client() as busy, srv.client() as idle:
        assert msa(idle.send(hl7("WARMUP")))[1] == "AA"  # both connections are registered now
        sink.release_commit.clear()
        sink.commit_started.clear()
        busy.send_raw(encode_frame(hl7("INFLIGHT")))
        assert sink.commit_started.wait(timeout=10)

        stopping = srv.submit(srv.server.stop(drain_timeout_s=20))
        # The idle connection is closed at once; the busy one waits for its commit.
        assert_closed_by_server(idle)
        assert not stopping.done()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

        sink.release_commit.set()
        assert msa(busy.receive())[:3] == ["MSA", "AA", "INFLIGHT"]
        assert_closed_by_server(busy)
        stopping.result(timeout=10)
    assert [m.header.control_id for m in sink.committed] == ["WARMUP", "INFLIGHT"]
    srv.close()


class BatchRecorder(MemorySink):
    """Records how many messages each commit was given."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def commit_many(self, messages: Sequence[InboundMessage]) -> list[Receipt]:
        self.batches.append(len(messages))
        return super().commit_many(messages)


def test_a_sender_that_pipelines_is_read_no_further_than_max_in_flight() -> None:
    """Backpressure: with the commits held up, ten frames sent at once reach the sink at
    most three at a time; each is answered, in order, once the commits go through."""
    sink = BatchRecorder()
    sink.release_commit.clear()
    with running(sink, MllpConfig(port=0, max_in_flight=3)) as srv, srv.client() as client:
        client.send_raw(b"".join(encode_frame(hl7(f"P{i}")) for i in range(10)))
        assert sink.commit_started.wait(timeout=10)
        sink.release_commit.set()
        assert [msa(client.receive())[2] for _ in range(10)] == [f"P{i}" for i in range(10)]
    assert sum(sink.batches) == 10 and max(sink.batches) <= 3


def _frames_received(server: MllpServer) -> float:
    return sum(
        sample.value
        for metric in server.metrics.received.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def test_answers_of_one_commit_leave_in_one_write_per_connection(sink: MemorySink) -> None:
    """Two senders pipeline five frames each while a commit is held up, so their frames
    share the next commit: each connection's five ACKs go out in one write (counted on the
    real transports), in order; the one that half-closed gets all five before the close."""
    sink.release_commit.clear()
    with running(sink) as srv, srv.client() as first, srv.client() as b, srv.client() as c:
        peers = {f"127.0.0.1:{client._socket().getsockname()[1]}" for client in (b, c)}
        first.send_raw(encode_frame(hl7("FIRST")))
        assert sink.commit_started.wait(timeout=10)  # the writer thread is now held
        b.send_raw(b"".join(encode_frame(hl7(f"B{i}")) for i in range(5)))
        c.send_raw(b"".join(encode_frame(hl7(f"C{i}")) for i in range(5)))
        b._socket().shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 10
        while _frames_received(srv.server) < 11:  # all eleven handed to the committer
            assert time.monotonic() < deadline, "frames never reached the committer"
            time.sleep(0.01)

        writes: dict[str, int] = {}

        async def count_writes() -> None:
            for connection in srv.server._connections:
                transport = connection._transport
                assert transport is not None
                real_write = transport.write
                peer = connection.peer

                def counted(data: Any, real_write: Any = real_write, peer: str = peer) -> None:
                    writes[peer] = writes.get(peer, 0) + 1
                    real_write(data)

                transport.write = counted  # type: ignore[method-assign]

        srv.call(count_writes())
        sink.release_commit.set()
        assert msa(first.receive())[2] == "FIRST"
        assert [msa(b.receive())[2] for _ in range(5)] == [f"B{i}" for i in range(5)]
        assert [msa(c.receive())[2] for _ in range(5)] == [f"C{i}" for i in range(5)]
        assert_closed_by_server(b)
    assert {peer: writes.get(peer) for peer in peers} == dict.fromkeys(peers, 1)


def test_port_before_start_is_an_error(sink: MemorySink) -> None:
    with pytest.raises(RuntimeError):
        _ = MllpServer(MllpConfig(port=0), sink).port


def test_serve_forever_returns_after_stop(sink: MemorySink) -> None:
    async def scenario() -> None:
        server = MllpServer(MllpConfig(port=0), sink)
        serving = asyncio.create_task(server.serve_forever())
        while server._server is None:
            await asyncio.sleep(0)
        await server.stop()
        await asyncio.wait_for(serving, 5)

    asyncio.run(scenario())


# -- fuzz --------------------------------------------------------------------------

_no_blocks = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
_mutated = st.tuples(st.integers(0, 200), st.integers(0, 200), st.binary(max_size=8)).map(
    lambda t: (hl7()[: t[0]] + t[2] + hl7()[t[1] :]).replace(b"\x0b", b"").replace(b"\x1c", b"")
)
_items = st.lists(
    st.one_of(
        st.tuples(st.just("frame"), st.one_of(_no_blocks, _mutated)),
        st.tuples(st.just("truncated"), st.one_of(_no_blocks, _mutated)),
        st.tuples(st.just("junk"), _no_blocks),
    ),
    max_size=6,
)


def test_fuzz_never_crashes_and_answers_every_frame(sink: MemorySink, records: Records) -> None:
    # Original mode: a mutated MSH-15 of "NE"/"ER" would rightly silence enhanced-mode ACKs.
    config = MllpConfig(port=0, max_frame_bytes=256, ack_mode=AckMode.ORIGINAL)

    with running(sink, config) as srv:

        @settings(
            max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
        )
        @given(_items, st.integers(1, 64))
        def scenario(items: list[tuple[str, bytes]], chunk: int) -> None:
            stream = b""
            complete = 0
            for kind, payload in items:
                if kind == "frame":
                    stream += encode_frame(payload)
                    complete += 1
                elif kind == "truncated":
                    stream += b"\x0b" + payload
                else:
                    stream += payload
            with srv.client() as client:
                for i in range(0, len(stream), chunk):
                    client.send_raw(stream[i : i + chunk])
                # The valid message after a truncated frame also ends that frame.
                client.send_raw(encode_frame(hl7("FINAL")))
                for _ in range(complete):
                    assert msa(client.receive())[1] in {"AA", "AR"}
                assert msa(client.receive())[:3] == ["MSA", "AA", "FINAL"]

        scenario()

    assert "mllp.bug" not in records.events()
    assert "mllp.failed" not in records.events()
    for item in sink.committed:
        peek_header(item.raw)  # only parseable messages were committed
