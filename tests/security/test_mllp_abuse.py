"""The MLLP listener under abuse (issue 17, "Listeners under abuse"), over real sockets.

The probe found 64 idle connections locked every other sender out, that a ``\\n`` every
few seconds kept a slot forever, and that every refusal was logged. Each test sets the
caps and timeouts low: the caps and the rules are what is tested, not the defaults.
Waiting is by polling with a generous deadline; no test asserts how long anything took.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress

import pytest

from connectors.mllp.client import MllpClient
from connectors.mllp.framing import encode_frame
from connectors.mllp.server import MllpConfig, MllpServer
from core.logs import LogBudget
from tests.fixtures.logs import Records, captured
from tests.test_connectors_server import MemorySink, ServerThread, hl7, msa

pytestmark = pytest.mark.timeout(90)

PEER_A = "127.0.0.1"
PEER_B = "127.0.0.2"  # Linux routes all of 127/8 to lo: a second peer on the same machine
# Lines the listener writes once per connection or refusal: the ones a flood multiplies.
CONNECTION_EVENTS = {"mllp.refused", "mllp.peer_denied", "mllp.opened", "mllp.closed", "mllp.idle"}


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def records() -> Iterator[Records]:
    with captured("sidecar.connectors.mllp") as handler:
        yield handler


@contextmanager
def running(sink: MemorySink, config: MllpConfig) -> Iterator[ServerThread]:
    harness = ServerThread(MllpServer(config, sink))
    try:
        yield harness
    finally:
        harness.close()


def wait_until(condition: Callable[[], bool], *, each: Callable[[], None] = lambda: None) -> None:
    """Poll ``condition``, running ``each`` between polls; fail after a generous deadline."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        each()
        time.sleep(0.05)


def connect(port: int, source: str = PEER_A) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


class Watch:
    """Which of many client sockets the server has closed (the listener sends nothing to
    an idle connection, so readable means EOF or reset)."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.open = set(socks)
        self._selector = selectors.DefaultSelector()
        for sock in socks:
            self._selector.register(sock, selectors.EVENT_READ)

    def poll(self) -> int:
        for key, _ in self._selector.select(timeout=0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(64)
            except ConnectionError:
                data = b""
            assert data == b"", "the listener wrote to an idle connection"
            self._selector.unregister(sock)
            self.open.discard(sock)
        return len(self.open)

    def keep_alive(self) -> None:
        """What the probe did: a stray newline, between frames, on every open connection."""
        for sock in list(self.open):
            with suppress(OSError):  # closed meanwhile: the next poll sees it
                sock.sendall(b"\n")


def test_one_peer_over_its_cap_does_not_lock_out_another(sink: MemorySink, records: Records) -> None:
    # Caps of 8 per peer and 16 in all (defaults 32/128), and a log budget of 5 lines with
    # next to no refill: the caps and the budget are what is tested.
    config = MllpConfig(
        port=0,
        max_connections=16,
        max_connections_per_peer=8,
        idle_timeout_s=60,
        log_burst=5,
        log_rate_per_s=0.001,
    )
    flood = 200
    with running(sink, config) as srv, ExitStack() as stack:
        socks = [stack.enter_context(connect(srv.server.port)) for _ in range(flood)]
        watch = Watch(socks)
        watch.keep_alive()
        # Beyond its cap, the peer's connections are closed at once (not left to hold a
        # file descriptor); the 8 it may have stay open.
        wait_until(lambda: watch.poll() == 8)
        assert srv.server.connection_count == 8

        # A second peer is served all the same.
        with MllpClient().connect("127.0.0.1", srv.server.port, timeout=10, source=PEER_B) as other:
            for i in range(3):
                assert msa(other.send(hl7(f"B{i}")))[:3] == ["MSA", "AA", f"B{i}"]
        assert [m.header.control_id for m in sink.committed] == ["B0", "B1", "B2"]
        assert all(m.peer.startswith(f"{PEER_B}:") for m in sink.committed)

        refused = srv.server.metrics.refused.labels("peer_limit")._value.get()
        assert refused == flood - 8
        assert watch.poll() == 8  # the second peer took no slot of the first's

    # The log stayed within its budget however many were refused, and says how many
    # lines it left out.
    lines = [r for r in records.records if getattr(r, "event", "") in CONNECTION_EVENTS]
    assert len(lines) <= 5
    summaries = [
        r.__dict__["suppressed"] for r in records.records if getattr(r, "event", "") == "log.suppressed"
    ]
    assert sum(s.get("mllp.refused", 0) for s in summaries) >= flood - 8 - 5


def test_stray_bytes_between_frames_do_not_keep_a_connection(sink: MemorySink, records: Records) -> None:
    # Idle timeout of 1 s (default 300 s): the timeout is what is tested.
    config = MllpConfig(port=0, idle_timeout_s=1.0)
    with running(sink, config) as srv, ExitStack() as stack:
        socks = [stack.enter_context(connect(srv.server.port)) for _ in range(4)]
        # One of them sent a message first: real traffic earlier does not exempt it later.
        socks[0].sendall(encode_frame(hl7("FIRST")))
        reply = socks[0].recv(4096)
        assert b"MSA|AA|FIRST" in reply
        watch = Watch(socks)
        # A newline every 50 ms is no traffic: every connection is closed all the same.
        wait_until(lambda: watch.poll() == 0, each=watch.keep_alive)
        assert srv.server.connection_count == 0
        assert srv.server.metrics.timeouts.labels("idle")._value.get() == 4
    assert records.events().count("mllp.idle") == 4


def test_a_frame_that_never_ends_is_cut_off(sink: MemorySink, records: Records) -> None:
    # A frame must end within 1.5 s here (default 60 s), although a byte arrives inside it
    # every 50 ms (which keeps the 1 s idle timeout from firing): the deadline is tested.
    config = MllpConfig(port=0, idle_timeout_s=1.0, frame_timeout_s=1.5)
    with running(sink, config) as srv, connect(srv.server.port) as sock:
        sock.sendall(b"\x0bMSH|^~\\&|")
        watch = Watch([sock])

        def trickle() -> None:
            if watch.open:
                with suppress(OSError):
                    sock.sendall(b"A")

        wait_until(lambda: watch.poll() == 0, each=trickle)
        assert srv.server.metrics.timeouts.labels("frame")._value.get() == 1
    assert "mllp.frame_timeout" in records.events()
    assert sink.committed == []


def test_a_new_start_block_does_not_restart_the_frame_deadline(sink: MemorySink) -> None:
    # A start block inside a frame abandons it and starts another; sent over and over, it
    # must not keep the connection: the frame deadline runs from the first start block.
    config = MllpConfig(port=0, idle_timeout_s=1.0, frame_timeout_s=1.5)
    with running(sink, config) as srv, connect(srv.server.port) as sock:
        watch = Watch([sock])

        def restart() -> None:
            if watch.open:
                with suppress(OSError):
                    sock.sendall(b"\x0bX")

        wait_until(lambda: watch.poll() == 0, each=restart)
        assert srv.server.metrics.timeouts.labels("frame")._value.get() == 1


def test_a_slow_frame_making_progress_is_not_idle(sink: MemorySink) -> None:
    # Bytes inside a frame are traffic: a frame trickled in over longer than the idle
    # timeout (1 s here), well within its deadline, is answered.
    config = MllpConfig(port=0, idle_timeout_s=1.0, frame_timeout_s=30)
    frame = encode_frame(hl7("SLOW"))
    step = len(frame) // 20 + 1
    with running(sink, config) as srv, srv.client() as client:
        for i in range(0, len(frame), step):
            client.send_raw(frame[i : i + step])
            time.sleep(0.1)
        assert msa(client.receive())[:3] == ["MSA", "AA", "SLOW"]
    assert [m.header.control_id for m in sink.committed] == ["SLOW"]


def test_peers_share_the_total_cap(sink: MemorySink) -> None:
    # 3 per peer and 4 in all: a second peer gets the one slot left, a third none.
    config = MllpConfig(port=0, max_connections=4, max_connections_per_peer=3)
    with running(sink, config) as srv, ExitStack() as stack:
        first = [stack.enter_context(connect(srv.server.port, PEER_A)) for _ in range(3)]
        second = [stack.enter_context(connect(srv.server.port, PEER_B)) for _ in range(2)]
        watch = Watch(first + second)
        wait_until(lambda: watch.poll() == 4)
        assert srv.server.connection_count == 4
        assert srv.server.metrics.refused.labels("total_limit")._value.get() == 1
        for sock in watch.open:
            sock.sendall(encode_frame(hl7("OPEN")))
            assert b"MSA|AA|OPEN" in sock.recv(4096)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_budget_bounds_lines_and_reports_what_it_left_out(records: Records) -> None:
    clock = FakeClock()
    budget = LogBudget(
        logging.getLogger("sidecar.connectors.mllp"),
        rate_per_s=2.0,
        burst=3,
        report_every_s=10.0,
        clock=clock,
    )
    for _ in range(1000):
        budget.warning("refused", event="mllp.refused", peer="x")
    assert records.events().count("mllp.refused") == 3
    clock.now = 1.0  # two lines' worth of tokens
    for _ in range(1000):
        budget.info("opened", event="mllp.opened")
    assert records.events().count("mllp.opened") == 2
    assert "log.suppressed" not in records.events()  # not yet due
    clock.now = 11.0
    budget.report()
    [summary] = [r for r in records.records if getattr(r, "event", "") == "log.suppressed"]
    assert summary.__dict__["suppressed"] == {"mllp.refused": 997, "mllp.opened": 998}
    budget.report()  # nothing left out since: no second summary
    assert records.events().count("log.suppressed") == 1
