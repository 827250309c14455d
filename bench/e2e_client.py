"""The senders of bench/e2e.py, each run as its own process (plain sockets, MLLP framing).

    python -m bench.e2e_client load    --port P --run R --first S --count N [--connections C --in-flight K]
    python -m bench.e2e_client waiting --port P --run R --first S --max-messages N --max-seconds T
    python -m bench.e2e_client steady  --port P --run R --first S --rate R --seconds T [--in-flight K]

Each builds its frames, connects, prints ``{"ready": true}`` and waits for ``go`` on stdin
(so building and connecting are never timed); ``waiting`` also stops early on ``stop``.
At the end it prints one JSON line with what it measured. Times are ``time.time()``: one
clock for every process on this machine, and the one the inbox's ``processed_at`` uses.

- load: C connections, each pipelining up to K frames (a patient's messages always on the
  same connection, in sequence order, as one feed would send them).
- waiting: one connection that sends the next message only after the previous ACK; the
  first --warmup round trips are not timed, then it runs for T seconds or N messages.
- steady: one connection, messages due at a fixed rate (open loop: a late ACK does not delay
  the next message, up to K in flight); every ACK is reported with its MSA-2.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any

from bench.e2e_messages import is_adt, message, seq_of_control_id

START_BLOCK, END = b"\x0b", b"\x1c\x0d"
BUCKET_S = 0.1  # resolution of the ACK timeline
STORED = ("AA", "CA")  # positive ACKs: the message is in the inbox


def frame(payload: bytes) -> bytes:
    return START_BLOCK + payload + END


def parse_acks(buffer: bytearray) -> list[tuple[str, str]]:
    """Complete ACK frames at the start of ``buffer`` (removed from it) as (MSA-1, MSA-2)."""
    acks = []
    while (end := buffer.find(END)) >= 0:
        payload = bytes(buffer[:end]).lstrip(START_BLOCK)
        del buffer[: end + 2]
        at = payload.find(b"MSA|")
        fields = payload[at:].split(b"\r", 1)[0].split(b"|") if at >= 0 else []
        acks.append(
            (fields[1].decode() if len(fields) > 1 else "?", fields[2].decode() if len(fields) > 2 else "")
        )
    return acks


def connect(port: int, source: str | None = None) -> socket.socket:
    address = (source, 0) if source else None
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    return sock


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def wait_for_go() -> None:
    print(json.dumps({"ready": True}), flush=True)
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go', got {line!r}")


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class _Connection:
    def __init__(self, port: int, seqs: list[int], frames: list[bytes], window: int) -> None:
        self.sock = connect(port)
        self.seqs, self.frames, self.window = seqs, frames, window
        self.sent_at: list[float] = []
        self.acked = 0
        self.buffer = bytearray()

    def fill(self) -> None:
        burst = []
        now = time.time()
        while len(self.sent_at) < len(self.frames) and len(self.sent_at) - self.acked < self.window:
            burst.append(self.frames[len(self.sent_at)])
            self.sent_at.append(now)
        if burst:
            self.sock.sendall(b"".join(burst))

    @property
    def done(self) -> bool:
        return self.acked == len(self.frames)


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    per_connection: list[list[int]] = [[] for _ in range(args.connections)]
    for seq in range(args.first, args.first + args.count):
        per_connection[(seq % args.patients) % args.connections].append(seq)
    connections = [
        _Connection(
            args.port, seqs, [frame(message(s, args.run, args.patients)) for s in seqs], args.in_flight
        )
        for seqs in per_connection
        if seqs
    ]
    wait_for_go()
    codes: Counter[str] = Counter()
    latencies: list[float] = []
    buckets: Counter[int] = Counter()
    cpu0 = cpu_seconds()
    first_send = time.time()
    last_ack = first_send
    oru = 0
    error = None
    with selectors.DefaultSelector() as selector:
        for conn in connections:
            selector.register(conn.sock, selectors.EVENT_READ, conn)
            conn.fill()
        pending = len(connections)
        while pending:
            events = selector.select(timeout=args.timeout)
            if not events:
                error = f"no ACK for {args.timeout}s"
                break
            for key, _ in events:
                conn = key.data
                data = conn.sock.recv(65536)
                if not data:
                    error = "the listener closed a connection"
                    pending = 0
                    break
                conn.buffer += data
                now = time.time()
                for code, _cid in parse_acks(conn.buffer):
                    codes[code] += 1
                    oru += code in STORED and not is_adt(conn.seqs[conn.acked])
                    latencies.append(now - conn.sent_at[conn.acked])
                    buckets[int((now - first_send) / BUCKET_S)] += 1
                    conn.acked += 1
                    last_ack = now
                if conn.done:
                    selector.unregister(conn.sock)
                    pending -= 1
                else:
                    conn.fill()
    for conn in connections:
        conn.sock.close()
    acked = sum(codes.values())
    return {
        "first_send": first_send,
        "last_ack": last_ack,
        "sent": sum(len(c.sent_at) for c in connections),
        "acked": acked,
        "codes": dict(codes),
        "oru_stored": oru,
        "ack_rate": acked / (last_ack - first_send) if last_ack > first_send else None,
        "ack_p50_ms": _ms(percentile(latencies, 0.5)),
        "ack_p99_ms": _ms(percentile(latencies, 0.99)),
        "ack_buckets": [buckets.get(i, 0) for i in range(max(buckets, default=-1) + 1)],
        "cpu_s": cpu_seconds() - cpu0,
        "error": error,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def _stop_on_line(stop: threading.Event) -> None:
    sys.stdin.readline()  # "stop", or end of file when the bench goes away
    stop.set()


def run_waiting(args: argparse.Namespace) -> dict[str, Any]:
    # Frames built ahead, so the loop below costs the sender nothing but the round trip.
    total = args.warmup + args.max_messages
    frames = [frame(message(args.first + i, args.run, args.patients)) for i in range(total)]
    stop = threading.Event()
    wait_for_go()
    threading.Thread(target=_stop_on_line, args=(stop,), daemon=True).start()
    # Connected only now: it may wait minutes for its turn, longer than the idle timeout.
    sock = connect(args.port, args.bind)
    sock.settimeout(args.timeout)
    codes: Counter[str] = Counter()
    rtts: list[float] = []
    buffer = bytearray()
    oru = 0
    error = None
    started = deadline = time.time()
    for i, data in enumerate(frames):
        if i == args.warmup:
            # The first round trips of a connection (and of a fresh listener) are not timed.
            started = time.time()
            deadline = started + args.max_seconds
            rtts.clear()
        elif i > args.warmup and (stop.is_set() or time.time() >= deadline):
            break
        sent = time.time()
        sock.sendall(data)
        acks: list[tuple[str, str]] = []
        try:
            while not acks:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the listener closed the connection")
                buffer += chunk
                acks = parse_acks(buffer)
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
            break
        rtts.append(time.time() - sent)
        codes[acks[0][0]] += 1
        oru += acks[0][0] in STORED and not is_adt(args.first + i)
    ended = time.time()
    sock.close()
    return {
        "started": started,
        "ended": ended,
        "acked": sum(codes.values()),
        "timed": len(rtts),
        "oru_stored": oru,
        "codes": dict(codes),
        "rate": len(rtts) / (ended - started) if ended > started else None,
        "rtt_p50_ms": _ms(percentile(rtts, 0.5)),
        "rtt_p99_ms": _ms(percentile(rtts, 0.99)),
        "rtt_max_ms": _ms(max(rtts, default=None)),
        "error": error,
    }


def run_steady(args: argparse.Namespace) -> dict[str, Any]:
    count = max(1, round(args.rate * args.seconds))
    frames = [frame(message(args.first + i, args.run, args.patients)) for i in range(count)]
    sock = connect(args.port)
    sock.setblocking(False)
    wait_for_go()
    codes: Counter[str] = Counter()
    acks: list[tuple[int, float]] = []
    latencies: list[float] = []
    sent_at: list[float] = []
    buffer = bytearray()
    error = None
    start = time.time()
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        last_progress = start
        while len(acks) < count:
            now = time.time()
            due = min(count, int((now - start) * args.rate) + 1)
            burst = []
            while len(sent_at) < due and len(sent_at) - len(acks) < args.in_flight:
                burst.append(frames[len(sent_at)])
                sent_at.append(now)
            if burst:
                sock.sendall(b"".join(burst))  # small bursts: the kernel buffer takes them at once
            next_due = start + len(sent_at) / args.rate if len(sent_at) < count else now + 1.0
            if not selector.select(timeout=max(0.0, next_due - time.time())):
                if time.time() - last_progress > args.timeout:
                    error = f"no ACK for {args.timeout}s"
                    break
                continue
            chunk = sock.recv(65536)
            if not chunk:
                error = "the listener closed the connection"
                break
            buffer += chunk
            now = time.time()
            for code, cid in parse_acks(buffer):
                codes[code] += 1
                latencies.append(now - sent_at[len(acks)])
                # -1: not stored (or no MSA-2), so never expected in the inbox or as an event.
                acks.append((seq_of_control_id(cid) if cid and code in STORED else -1, now))
                last_progress = now
    sock.close()
    last = acks[-1][1] if acks else start
    return {
        "started": start,
        "sent": len(sent_at),
        "acked": len(acks),
        "oru_stored": sum(1 for s, _ in acks if s >= 0 and not is_adt(s)),
        "codes": dict(codes),
        "achieved_rate": len(acks) / (last - start) if last > start else None,
        "ack_p50_ms": _ms(percentile(latencies, 0.5)),
        "ack_p99_ms": _ms(percentile(latencies, 0.99)),
        "acks": [[s, round(t, 6)] for s, t in acks],
        "error": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=["load", "waiting", "steady"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--run", required=True, help="tag that makes this run's control ids unique")
    parser.add_argument("--first", type=int, default=0, help="sequence number of the first message")
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--max-messages", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20, help="waiting: untimed round trips first")
    parser.add_argument("--max-seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--bind", help="waiting: the source address to connect from (a second peer)")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this long without an ACK")
    args = parser.parse_args()
    run = {"load": run_load, "waiting": run_waiting, "steady": run_steady}[args.kind]
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
