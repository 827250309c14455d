"""The listeners under abuse: does one sender's big input or one peer's flood stall the others?

    make bench-abuse          # or: .venv/bin/python -m bench.abuse [--drop-mb 100] [--dicom-mb 64]

`sidecar serve` as a user runs it (embedded default, HTTP API, DICOM Storage SCP and a drop
folder on), started with a file-descriptor limit of 1,024 (soft and hard, as a systemd
service gets by default), default settings otherwise. One waiting MLLP sender (its own
process, bench/e2e_client.py: the next message only after the previous ACK) measures ACK
round trips in each phase:

1. **alone**: the baseline of this run: the waiting sender and the second peer's traffic
   (below) from 127.0.0.2, nothing else;
2. **big drop**: a file holding one `--drop-mb` MB HL7 message is renamed into the drop folder;
3. **big DICOM**: a `--dicom-mb` MB object (its bulk one ImageComments element) is C-STOREd;
4. **floods**, from 127.0.0.1: `--idle-mllp` MLLP connections kept alive with a stray `\\n`
   each second, `--slow-http` HTTP requests that never finish their headers, `--bare-dicom`
   TCP connects to the DICOM port that never send a PDU. Meanwhile, from 127.0.0.2 (a second
   peer), the waiting sender runs, `GET /status` is asked every 0.1 s, and a small CT is
   C-STOREd every second.

Reported per phase: the waiting sender's round trips (p50, p99, max), the second peer's
API and C-STORE answers (flood phase), serve's log growth (lines and bytes per second), and
for the big inputs what the sidecar answered and whether it quarantined them. It reports;
it asserts nothing (the acceptance of issue 17 reads: p99 <= 100 ms during each big input;
the second peer served throughout the floods; the log growing by a few lines a second).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import httpx

from bench.e2e import REPO, BenchError, Client, Proc, clean_env, sidecar_cli

SECOND_PEER = "127.0.0.2"
FD_LIMIT = 1024


class Serve:
    def __init__(self, workdir: Path) -> None:
        self.workdir, self.token = workdir, uuid.uuid4().hex
        self.drop = workdir / "drop"
        self.drop.mkdir()
        env = clean_env(
            SIDECAR_DATA_DIR=str(workdir / "data"),
            SIDECAR_API_PORT="0",
            SIDECAR_API_TOKENS=json.dumps({"bench": self.token}),
            SIDECAR_DICOM_PORT="0",
            SIDECAR_DROP_DIR=str(self.drop),
        )
        argv = ["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", *sidecar_cli(), "serve", "--mllp-port", "0"]
        self.log = workdir / "serve.log"
        self.proc = Proc("serve", argv, env, self.log)
        line = self.proc.json_line(120)
        self.mllp, self.api, self.dicom = (
            int(line["mllp_port"]),
            int(line["api_port"]),
            int(line["dicom_port"]),
        )

    def status(self, source: str = "127.0.0.1", timeout: float = 5.0) -> dict[str, Any]:
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(transport=transport, timeout=timeout) as client:
            answer = client.get(
                f"http://127.0.0.1:{self.api}/status", headers={"Authorization": f"Bearer {self.token}"}
            )
            answer.raise_for_status()
            return dict(answer.json())

    def log_size(self) -> tuple[int, int]:
        data = self.log.read_bytes() if self.log.exists() else b""
        return data.count(b"\n"), len(data)


def waiting(serve: Serve, seconds: float, *, source: str = "127.0.0.1") -> Client:
    client = Client(
        "waiting",
        serve.workdir,
        serve.mllp,
        run=uuid.uuid4().hex[:6],
        max_messages=int(seconds * 4000),
        max_seconds=seconds,
        warmup=20,
        bind=source,
    ).ready()
    client.go()
    return client


def big_hl7(megabytes: int) -> bytes:
    head = (
        b"MSH|^~\\&|LAB|HOSP|SIDECAR|HOSP|20260101120000||ORU^R01|BIG1|P|2.5.1\r"
        b"PID|1||MRN-BIG^^^HOSP^MR||DOE^JANE||19700101|F\r"
        b"OBR|1||ORD-BIG|1234-5^Panel^LN\r"
        b"OBX|1|TX|1234-5^Text^LN||"
    )
    words = b"Smith Jones Alpha Beta Gamma Delta "
    return head + words * (megabytes * 1024 * 1024 // len(words)) + b"|||||F\r"


def big_dicom(megabytes: int) -> Any:
    import pydicom
    from pydicom.data import get_testdata_file

    dataset = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    dataset.ImageComments = "x" * (megabytes * 1024 * 1024)
    return dataset


def c_store(port: int, dataset: Any, *, source: str = "127.0.0.1", timeout: float = 120.0) -> str:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title="BENCHSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(CTImageStorage, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SIDECAR", bind_address=(source, 0))
    if not assoc.is_established:
        return "no association"
    try:
        status = assoc.send_c_store(dataset)
        return f"0x{int(status.Status):04X}" if "Status" in status else "no status"
    finally:
        with suppress(Exception):
            assoc.release()


def _quarantined(serve: Serve) -> int | None:
    """The quarantine's size, or None when the API does not answer within 5 s."""
    try:
        return int(serve.status().get("quarantined", 0))
    except httpx.HTTPError:
        return None


def _quarantine_growth(serve: Serve, before: int | None, wait_s: float) -> int | str:
    deadline = time.monotonic() + wait_s
    now = _quarantined(serve)
    while (now is None or now == before) and time.monotonic() < deadline:
        time.sleep(0.5)
        now = _quarantined(serve)
    if now is None or before is None:
        return "API did not answer"
    return now - before


class SecondPeer:
    """From 127.0.0.2 while a phase runs: `GET /status` every 0.1 s (2 s timeout) and a small
    CT C-STOREd every second; outcomes counted, the API's answer times kept."""

    def __init__(self, serve: Serve) -> None:
        import pydicom
        from pydicom.data import get_testdata_file

        self.serve, self.stop = serve, threading.Event()
        self.small = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
        self.api: dict[str, int] = {}
        self.api_s: list[float] = []
        self.timeline: list[tuple[float, str, float]] = []  # (s into the phase, outcome, s taken)
        self.began = time.monotonic()
        self.stores: dict[str, int] = {}
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._ask_api, self._store_ct)]

    def _ask_api(self) -> None:
        while not self.stop.wait(0.1):
            asked = time.monotonic()
            try:
                self.serve.status(SECOND_PEER, timeout=2.0)
                key = "ok"
                self.api_s.append(time.monotonic() - asked)
            except Exception as exc:
                key = type(exc).__name__
            self.api[key] = self.api.get(key, 0) + 1
            self.timeline.append((round(asked - self.began, 1), key, round(time.monotonic() - asked, 3)))

    def _store_ct(self) -> None:
        import pydicom

        while not self.stop.wait(1.0):
            self.small.SOPInstanceUID = pydicom.uid.generate_uid()
            key = c_store(self.serve.dicom, self.small, source=SECOND_PEER, timeout=10.0)
            self.stores[key] = self.stores.get(key, 0) + 1

    def __enter__(self) -> SecondPeer:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def result(self) -> dict[str, Any]:
        ordered = sorted(self.api_s)
        worst = {"api_ok_max_ms": round(ordered[-1] * 1000)} if ordered else {}
        return {"api": self.api, "c_store": self.stores, "api_timeline": self.timeline} | worst


def phase_alone(serve: Serve, seconds: float) -> dict[str, Any]:
    lines0, bytes0 = serve.log_size()
    with SecondPeer(serve) as peer:
        result = waiting(serve, seconds, source=SECOND_PEER).result(seconds + 60)
    return result | peer.result() | _log_growth(serve, lines0, bytes0, seconds)


def phase_big_drop(serve: Serve, megabytes: int, seconds: float) -> dict[str, Any]:
    staged = serve.workdir / "big.hl7.part"
    staged.write_bytes(big_hl7(megabytes))
    before, (lines0, bytes0) = _quarantined(serve), serve.log_size()
    client = waiting(serve, seconds)
    time.sleep(1.0)
    os.rename(staged, serve.drop / "incoming" / "big.hl7")  # renamed into place: complete when seen
    result = client.result(seconds + 300)
    quarantined = _quarantine_growth(serve, before, 60)
    return result | {"quarantined": quarantined} | _log_growth(serve, lines0, bytes0, seconds)


def phase_big_dicom(serve: Serve, megabytes: int, seconds: float) -> dict[str, Any]:
    dataset = big_dicom(megabytes)
    before, (lines0, bytes0) = _quarantined(serve), serve.log_size()
    client = waiting(serve, seconds)
    answer: list[str] = []
    time.sleep(1.0)
    sender = threading.Thread(target=lambda: answer.append(c_store(serve.dicom, dataset)), daemon=True)
    sender.start()
    result = client.result(seconds + 300)
    sender.join(120)
    quarantined = _quarantine_growth(serve, before, 30)
    return (
        result
        | {"c_store": answer[0] if answer else "no answer", "quarantined": quarantined}
        | _log_growth(serve, lines0, bytes0, seconds)
    )


class Flood:
    """Sockets from 127.0.0.1 that hold the listeners' slots and never finish anything."""

    def __init__(self, serve: Serve, idle_mllp: int, slow_http: int, bare_dicom: int) -> None:
        self.serve, self.stop = serve, threading.Event()
        self.plan = {
            "mllp": (serve.mllp, idle_mllp),
            "http": (serve.api, slow_http),
            "dicom": (serve.dicom, bare_dicom),
        }
        self.open: dict[str, list[socket.socket]] = {kind: [] for kind in self.plan}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self, kind: str, port: int) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))  # a refusal shows as a failed send later
        self.open[kind].append(sock)

    def _run(self) -> None:
        for kind, (port, count) in self.plan.items():
            for _ in range(count):
                if self.stop.is_set():
                    return
                self._connect(kind, port)
        time.sleep(0.5)
        for sock in self.open["http"]:
            with suppress(OSError):
                sock.send(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        while not self.stop.wait(1.0):
            for kind, line in (("mllp", b"\n"), ("http", b"X-a: b\r\n")):
                alive = []
                for sock in self.open[kind]:
                    try:
                        sock.send(line)
                        alive.append(sock)
                    except OSError:
                        sock.close()
                self.open[kind] = alive

    def __enter__(self) -> Flood:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        for socks in self.open.values():
            for sock in socks:
                sock.close()


def phase_floods(serve: Serve, args: argparse.Namespace) -> dict[str, Any]:
    lines0, bytes0 = serve.log_size()
    with Flood(serve, args.idle_mllp, args.slow_http, args.bare_dicom) as flood:
        time.sleep(3.0)  # the flood is in place before the second peer starts
        with SecondPeer(serve) as peer:
            result = waiting(serve, args.seconds, source=SECOND_PEER).result(args.seconds + 120)
        held = {kind: len(socks) for kind, socks in flood.open.items()}
    return (
        result
        | peer.result()
        | {"flood_sockets_open_at_end": held}
        | _log_growth(serve, lines0, bytes0, args.seconds + 3.0)
    )


def _log_growth(serve: Serve, lines0: int, bytes0: int, seconds: float) -> dict[str, Any]:
    lines, size = serve.log_size()
    return {"log_lines_per_s": (lines - lines0) / seconds, "log_bytes_per_s": (size - bytes0) / seconds}


def _row(name: str, r: dict[str, Any]) -> str:
    def ms(key: str) -> str:
        value = r.get(key)
        return f"{value:9.1f}" if isinstance(value, int | float) else f"{'-':>9}"

    extra = {
        k: r[k] for k in ("quarantined", "c_store", "api", "api_ok_max_ms", "error") if r.get(k) is not None
    }
    return (
        f"  {name:<12} {r.get('timed', 0):7,} {ms('rtt_p50_ms')} {ms('rtt_p99_ms')} {ms('rtt_max_ms')}"
        f" {r['log_lines_per_s']:9.1f} {r['log_bytes_per_s'] / 1024:9.1f}  {json.dumps(extra)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drop-mb", type=int, default=100)
    parser.add_argument("--dicom-mb", type=int, default=64)
    parser.add_argument("--idle-mllp", type=int, default=1000)
    parser.add_argument("--slow-http", type=int, default=1100)
    parser.add_argument("--bare-dicom", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase's waiting sender")
    parser.add_argument("--phases", default="alone,big drop,big DICOM,floods", help="comma-separated")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if shutil.which("prlimit") is None:
        raise SystemExit("prlimit (util-linux) is needed to start serve with a 1,024 descriptor limit")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the flood's own sockets

    workdir = Path(tempfile.mkdtemp(prefix="bench-abuse-"))
    results: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        serve = Serve(workdir)
        stack.callback(serve.proc.stop)
        phases = (
            ("alone", lambda: phase_alone(serve, args.seconds)),
            ("big drop", lambda: phase_big_drop(serve, args.drop_mb, args.seconds)),
            ("big DICOM", lambda: phase_big_dicom(serve, args.dicom_mb, args.seconds)),
            ("floods", lambda: phase_floods(serve, args)),
        )
        for name, run in phases:
            if name not in args.phases.split(","):
                continue
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            try:
                results[name] = run()
            except Exception as exc:  # a phase that broke the sidecar is a result, not the end
                error = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
                results[name] = {"error": error[:300], "log_lines_per_s": 0.0, "log_bytes_per_s": 0.0}
            if not serve.proc.alive():
                results[name]["error"] = "serve exited" + serve.proc.tail()
                break

    print(
        f"bench-abuse: sidecar serve (embedded, API, DICOM, drop folder; {FD_LIMIT} descriptors), "
        f"drop {args.drop_mb} MB, DICOM {args.dicom_mb} MB, floods {args.idle_mllp} MLLP / "
        f"{args.slow_http} HTTP / {args.bare_dicom} DICOM from 127.0.0.1, second peer {SECOND_PEER}"
    )
    print(
        f"  {'phase':<12} {'ACKs':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}"
        f" {'log l/s':>9} {'log KB/s':>9}"
    )
    for name, r in results.items():
        print(_row(name, r))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if args.keep:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
