"""Benchmarks: reported figures with a named baseline measured in the same run.

    make bench            # or: .venv/bin/python -m bench.run --messages 2000

1. Mapping: `mapping.map_message` (parse + map + validate) on the canonical ORU from
   tests/fixtures, against hl7apy's full parse of the same message (baseline: parsing
   only, no mapping at all).
2. Intake: the embedded sidecar on SQLite, N messages over 4 MLLP connections, each ACKed
   only after its fsync'd commit; against the durability floor (baseline: one
   INSERT + COMMIT per message into SQLite WAL with synchronous=FULL, no network, no HL7).
   Also the end-to-end rate until every message is mapped, de-identified and published.
3. Free-text de-identification on the planted-identifier corpus: recall of planted
   identifiers and retention of clinical values, beside the baseline of removing only the
   values the message reported (`bench/deid_text.py` has the table per identifier type).
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hl7apy.parser import parse_message

from bench.deid_text import summary as deid_text_summary
from connectors import MllpClient
from mapping import map_message
from tests.deployments import Embedded
from tests.fixtures.messages import ORU_R01, with_control_id


def per_call(fn: Callable[[], object], repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def bench_mapping(repeat: int) -> None:
    ours = per_call(lambda: map_message(ORU_R01), repeat)
    baseline = per_call(lambda: parse_message(ORU_R01, find_groups=True), max(10, repeat // 10))
    print("mapping, canonical ORU^R01 (6 segments -> 5 resources)")
    print(f"  map_message (parse+map+validate): {ours * 1e3:8.3f} ms/msg  {1 / ours:8.0f} msg/s")
    print(f"  baseline hl7apy full parse only : {baseline * 1e3:8.3f} ms/msg  {1 / baseline:8.0f} msg/s")
    print(f"  ratio baseline/ours             : {baseline / ours:8.1f}x")


def bench_fsync_floor(n: int, folder: Path) -> float:
    conn = sqlite3.connect(folder / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, raw BLOB)")
    payload = ORU_R01.encode()
    start = time.perf_counter()
    for _ in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (raw) VALUES (?)", (payload,))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def bench_intake(n: int, connections: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        floor = bench_fsync_floor(n, Path(tmp))
        dep = Embedded(Path(tmp) / "data")
        dep.start()
        try:
            per_conn = n // connections

            def sender(c: int) -> None:
                with MllpClient().connect("127.0.0.1", dep.port, timeout=60) as client:
                    for i in range(per_conn):
                        client.send(with_control_id(ORU_R01, f"B{c}-{i}").encode())

            start = time.perf_counter()
            threads = [threading.Thread(target=sender, args=(c,)) for c in range(connections)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            acked = time.perf_counter() - start
            dep.settle(600)
            done = time.perf_counter() - start
        finally:
            dep.stop()
    total = per_conn * connections
    print(f"intake, embedded (SQLite WAL, synchronous=FULL), {total} ORU over {connections} connections")
    print(f"  ACKed after durable commit      : {total / acked:8.0f} msg/s")
    print(f"  end to end (mapped, de-identified, stored, published, summarised): {total / done:8.0f} msg/s")
    print(f"  baseline one fsync'd INSERT per message, no network: {floor:8.0f} msg/s")
    print(f"  ratio ACK rate / baseline       : {total / acked / floor:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=500)
    args = parser.parse_args()
    bench_mapping(args.repeat)
    bench_intake(args.messages, args.connections)
    deid_text_summary()


if __name__ == "__main__":
    main()
