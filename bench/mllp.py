"""MLLP intake benchmark: durable ingest beside a bare asyncio echo server (the ceiling).

    make bench-mllp          # or: .venv/bin/python -m bench.mllp [--messages N] [--pg URL]

The listener runs in its own process (bench/mllp_server.py) with nothing but the intake:
frames → MSH peek → charset → group commit into the inbox (fsync'd) → ACK. The load
client is another process (plain sockets and a selector). Scenarios:

- 1 connection, original mode: the sender waits for each ACK (how most interfaces send).
- 1 connection, pipelined: a window of 12 frames in flight (few senders do this; it shows
  what one connection carries when the sender does not wait).
- 8 connections, 1 in flight each.
- 8 connections, pipelined (a window of 12, and of 32, frames in flight per connection).

Each is run against the echo server (same framing and ACK building, nothing stored), the
"fsync floor" (the echo server plus one fsync'd insert into a bare SQLite table per read,
on the event loop: what durability alone costs on this disk; and the same on PostgreSQL —
one commit per read, so with many connections it is a reference, not a bound), and the
sidecar on SQLite
(WAL, synchronous=FULL) and on PostgreSQL. Reported:
messages/s, ACK latency p50/p99 (send → ACK received), and the ratio to the echo ceiling.
Messages are the canonical ORU^R01 of tests/fixtures with unique control ids.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import psycopg

from connectors.mllp.framing import encode_frame
from tests.fixtures.messages import ORU_R01, with_control_id

END_BLOCK = b"\x1c"
DEFAULT_PG = "postgresql://root@127.0.0.1:5432/test"


@dataclass(frozen=True)
class Result:
    rate: float
    p50_ms: float
    p99_ms: float
    started: float  # time.monotonic() when the first frame went out
    messages: int


@dataclass
class Listener:
    port: int
    final: dict[str, float] = field(default_factory=dict)  # what the sidecar prints at its end

    def stored_rate(self, result: Result) -> float | None:
        """Messages per second until the last one was in the inbox (with the journal, that
        can be later than its ACK), or None for listeners that store nothing."""
        stored_at = self.final.get("stored_at", 0.0)
        if stored_at <= result.started:
            return None
        return result.messages / (stored_at - result.started)


class _Sender:
    """One connection of the load client: a window of frames in flight, ACKs counted by
    their end-block byte (an ACK frame holds exactly one 0x1C)."""

    def __init__(self, port: int, frames: list[bytes], window: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frames, self.window = frames, window
        self.sent_at: list[float] = []
        self.acked = 0

    def fill(self) -> None:
        burst = []
        while len(self.sent_at) < len(self.frames) and len(self.sent_at) - self.acked < self.window:
            burst.append(self.frames[len(self.sent_at)])
            self.sent_at.append(time.perf_counter())
        if burst:
            self.sock.sendall(b"".join(burst))

    def read(self, latencies: list[float]) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        now = time.perf_counter()
        for _ in range(data.count(END_BLOCK)):
            latencies.append(now - self.sent_at[self.acked])
            self.acked += 1

    @property
    def done(self) -> bool:
        return self.acked == len(self.frames)


def _load(port: int, connections: int, per_connection: int, window: int) -> Result:
    """The load client: plain sockets and a selector, no asyncio. It shares the machine's
    two cores with the listener, so it is kept lean (an asyncio client cost ~100 µs of CPU
    per message, as much as the echo server itself); both the echo ceiling and the sidecar
    are measured with this same client."""
    run = uuid.uuid4().hex[:6]
    senders = [
        _Sender(
            port,
            [
                encode_frame(with_control_id(ORU_R01, f"{run}-{c}-{i}").encode())
                for i in range(per_connection)
            ],
            window,
        )
        for c in range(connections)
    ]
    latencies: list[float] = []
    with selectors.DefaultSelector() as selector:
        for sender in senders:
            selector.register(sender.sock, selectors.EVENT_READ, sender)
        start = time.perf_counter()
        started = time.monotonic()
        for sender in senders:
            sender.fill()
        pending = len(senders)
        while pending:
            for key, _ in selector.select(timeout=60):
                sender = key.data
                sender.read(latencies)
                if sender.done:
                    selector.unregister(sender.sock)
                    pending -= 1
                else:
                    sender.fill()
        elapsed = time.perf_counter() - start
    for sender in senders:
        sender.sock.close()
    ordered = sorted(latencies)
    return Result(
        rate=len(ordered) / elapsed,
        p50_ms=statistics.median(ordered) * 1e3,
        p99_ms=ordered[int(len(ordered) * 0.99) - 1] * 1e3,
        started=started,
        messages=len(ordered),
    )


@contextmanager
def listener(kind: str, url: str | None = None) -> Iterator[Listener]:
    args = [sys.executable, "-m", "bench.mllp_server", kind] + ([url] if url else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    handle = Listener(json.loads(proc.stdout.readline())["port"])
    try:
        yield handle
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        for line in rest.splitlines():
            if line.startswith("{"):
                handle.final = json.loads(line)


@contextmanager
def fresh_pg(admin_url: str) -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


SCENARIOS = [
    ("1 connection, original mode", 1, 1),
    ("1 connection, pipelined (window 12)", 1, 12),
    ("8 connections, 1 in flight each", 8, 1),
    ("8 connections, pipelined (window 12)", 8, 12),
    ("8 connections, pipelined (window 32)", 8, 32),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=8000, help="messages per scenario")
    parser.add_argument("--pg", default=os.environ.get("SIDECAR_TEST_PG", DEFAULT_PG))
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument(
        "--scenario", type=int, action="append", choices=range(1, len(SCENARIOS) + 1),
        help="run only this scenario (1-based, repeatable); default all",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run every target this many times, round by round, and report medians "
        "(this machine's speed drifts by tens of percent within minutes)",
    )  # fmt: skip
    args = parser.parse_args()
    scenarios = [SCENARIOS[i - 1] for i in args.scenario] if args.scenario else SCENARIOS

    targets: list[tuple[str, str, str | None]] = [
        ("echo ceiling", "echo", None),
        ("echo + fsync floor", "fsync-floor", None),
        ("sidecar, SQLite", "sidecar", None),
    ]
    with ExitStack() as stack:
        if not args.no_pg:
            pg_url = stack.enter_context(fresh_pg(args.pg))
            targets.append(("echo + PG commit floor", "pg-floor", pg_url))
            targets.append(("sidecar, PostgreSQL", "sidecar", pg_url))
            targets.append(("sidecar, PG + journal", "sidecar-journal", pg_url))
        for title, connections, window in scenarios:
            per_connection = max(1, args.messages // connections)
            rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
            print(f"\n{title}: {per_connection * connections} messages{rounds}")
            runs: dict[str, list[tuple[Result, float | None, float]]] = {name: [] for name, _, _ in targets}
            for round_ in range(args.rounds):
                ceiling = 0.0
                for name, kind, url in targets:
                    with listener(kind, url) as handle:
                        result = _load(handle.port, connections, per_connection, window)
                    ceiling = ceiling or result.rate
                    runs[name].append((result, handle.stored_rate(result), result.rate / ceiling))
                    if args.rounds > 1:
                        print(f"    round {round_ + 1}: {name:22s} {result.rate:8.0f} msg/s", flush=True)
            for name, measured in runs.items():
                _report(name, measured)


def _report(name: str, measured: list[tuple[Result, float | None, float]]) -> None:
    rates = [r.rate for r, _, _ in measured]
    stored = [s for _, s, _ in measured if s is not None]
    spread = f"  ({min(rates):.0f}-{max(rates):.0f})" if len(rates) > 1 else ""
    print(
        f"  {name:22s} {statistics.median(rates):8.0f} msg/s   "
        f"p50 {statistics.median(r.p50_ms for r, _, _ in measured):6.2f} ms   "
        f"p99 {statistics.median(r.p99_ms for r, _, _ in measured):6.2f} ms   "
        f"{statistics.median(c for _, _, c in measured):5.2f} of ceiling"
        + (f"   in inbox {statistics.median(stored):8.0f} msg/s" if stored else "")
        + spread,
        flush=True,
    )


if __name__ == "__main__":
    main()
