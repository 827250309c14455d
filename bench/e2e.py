"""End-to-end benchmark: the sidecar as a user runs it, HL7 v2 over MLLP in, FHIR out.

    make bench-e2e       # or: .venv/bin/python -m bench.e2e [--messages N] [--mode embedded|production|both]

Every part is a real process: the CLI (`sidecar serve`, `sidecar worker`), the load client
(bench/e2e_client.py, another process, plain sockets), and the bench process itself, which
only watches: it polls the HTTP API's `GET /status` (bearer token) every `--poll` seconds
and, in production, consumes the Observation events from a queue of its own bound to the
`sidecar.events` exchange. Nothing is called in-process.

- embedded: `sidecar serve` on a fresh data directory (SQLite, the pipeline wherever serve
  runs it), the HTTP API on.
- production: a fresh PostgreSQL database and RabbitMQ vhost; `sidecar serve` and two
  `sidecar worker` processes (lanes 0-1 and 2-3 of 4).

The load: ORU^R01 with 10 OBX for `--patients` patients, 1 in 10 an ADT^A01/A08
(bench/e2e_messages.py), over `--connections` connections each pipelining `--in-flight`
frames, after a small warm-up (so first-use imports are not timed). Per mode it reports:

1. end to end msg/s: first byte sent → as many inbox entries processed as the load sent
   (`/status` `inbox.processed` + `inbox.failed`), and in production → the load's last
   Observation event on the bench's queue (10 per ORU);
2. the load's ACK msg/s (its ACKs / time to its last ACK) and ACK latency p50/p99;
3. the backlog over time (t, acked, received, processed, pending);
4. one waiting sender (1 connection, next message after the previous ACK) from the load's
   last ACK on, while the pipeline works off the backlog, beside the same sender against
   the listener alone (`python -m bench.mllp_server sidecar`) in the same run: the ratio
   is the acceptance figure (≥ 0.80: the pipeline may not starve the intake);
5. latency at a steady `--steady-rate` msg/s for `--steady-seconds`: ACK → processed
   (the inbox's `processed_at`; embedded and production) and ACK → the Observation event
   that carries the message's sequence number (production);
6. CPU ms per message of every process (serve, each worker, and their child processes),
   from /proc before/after the throughput phase; and `pipeline.cpu_ms.<stage>` from
   `/status` per message, if the sidecar exposes such keys.

Beside them, measured in the same invocation: the echo ceiling (bench/mllp_server.py's echo,
same load client and load) and the map-only rate (`mapping.map_message`, parse + map, no
validation, one process). Ratios are to those. `--json FILE` writes everything, including
the full series. How to read it: docs/benchmarks-e2e.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import queue
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions
import psycopg

from bench.e2e_messages import is_adt, message, seq_of_control_id, seq_of_event
from bench.mllp import fresh_pg

REPO = Path(__file__).resolve().parents[1]
LANES = 4
WORKERS = {"worker-a": [0, 1], "worker-b": [2, 3]}
OBX_PER_ORU = 10
# Sequence-number ranges, so the phases' messages never share a control id or a value.
WAITING_BASE, STEADY_BASE, WARMUP_BASE = 1_000_000, 2_000_000, 3_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
STAGE_STATS_LAG_S = 2.5
INBOX_QUERY = (
    "SELECT control_id, processed_at FROM inbox WHERE control_id LIKE %s AND processed_at IS NOT NULL"
)


class BenchError(Exception):
    pass


STARTED: list[Proc] = []  # every process the bench started, stopped at the end whatever happened


# --- processes ----------------------------------------------------------------------------


class Proc:
    """A child process in its own session (so its children can be killed with it), stdout
    read by a thread into a queue, stderr into a log file."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, stdin: bool = False
    ) -> None:
        self.name, self.log_path = name, log
        self._log = log.open("w")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        STARTED.append(self)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True, name=f"stdout-{name}").start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def json_line(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"{self.name}: no answer within {timeout:.0f}s{self.tail()}") from None
            if line is None:
                raise BenchError(f"{self.name} exited ({self.popen.wait()}){self.tail()}")
            if line.startswith("{"):
                return dict(json.loads(line))

    def poll_json(self) -> dict[str, Any] | None:
        """The next JSON line if one is there already, else None."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return None
            if line is None:
                raise BenchError(f"{self.name} exited ({self.popen.wait()}){self.tail()}")
            if line.startswith("{"):
                return dict(json.loads(line))

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""
        return f"\n--- {self.log_path.name} (tail)\n{text}" if text.strip() else ""

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL to its whole session (children included) after ``grace``."""
        if self.popen.poll() is None:
            with suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        # Whatever is left of its session (a child that outlived it, or it) goes now.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any SIDECAR_* of the caller's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    return env | extra


def sidecar_cli() -> list[str]:
    script = Path(sys.executable).parent / "sidecar"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sidecar"]


class Client:
    """One bench/e2e_client.py process: started, ready (frames built), then go."""

    def __init__(self, kind: str, workdir: Path, port: int, **options: Any) -> None:
        argv = [sys.executable, "-m", "bench.e2e_client", kind, "--port", str(port)]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = Proc(
            f"client-{kind}",
            argv,
            clean_env(),
            workdir / f"client-{kind}-{uuid.uuid4().hex[:4]}.log",
            stdin=True,
        )

    def ready(self, timeout: float = 120.0) -> Client:
        self.proc.json_line(timeout)
        return self

    def go(self) -> None:
        self.proc.send("go")

    def stop_early(self) -> None:
        with suppress(OSError):
            self.proc.send("stop")

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            return self.proc.json_line(timeout)
        finally:
            self.proc.stop(5)


@contextmanager
def mllp_server(kind: str, workdir: Path, url: str | None = None) -> Iterator[int]:
    """bench/mllp_server.py (its temp data directory lands under ``workdir``)."""
    argv = [sys.executable, "-m", "bench.mllp_server", kind, *([url] if url else [])]
    tmp = workdir / f"tmp-{kind}"
    tmp.mkdir(exist_ok=True)
    proc = Proc(f"mllp_server-{kind}", argv, clean_env(TMPDIR=str(tmp)), workdir / f"mllp_server-{kind}.log")
    try:
        yield int(proc.json_line(60)["port"])
    finally:
        proc.stop(60)


# --- what the bench watches -------------------------------------------------------------


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


class StatusPoller(threading.Thread):
    """GET /status every ``interval`` seconds, kept as (time of the answer, flat counts)."""

    def __init__(self, port: int, token: str, interval: float) -> None:
        super().__init__(daemon=True, name="status-poller")
        self.port, self.token, self.interval = port, token, interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.errors = 0
        self.last_error = ""
        self._halt = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()  # one request at a time on the kept-alive connection

    def fetch(self) -> dict[str, float] | None:
        with self._lock:
            return self._fetch()

    def _fetch(self) -> dict[str, float] | None:
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self._conn.request("GET", "/status", headers={"Authorization": f"Bearer {self.token}"})
            response = self._conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise BenchError(f"/status answered {response.status}: {body[:200]!r}")
            return flatten(json.loads(body))
        except (OSError, http.client.HTTPException, BenchError, ValueError) as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return None

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            counts = self.fetch()
            if counts is not None:
                self.samples.append((time.time(), counts))
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def latest(self) -> dict[str, float]:
        return self.samples[-1][1] if self.samples else {}

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


class EventCounter(threading.Thread):
    """The subscriber: a queue of its own bound to ``fhir.Observation.*``, consumed here.
    Counts distinct events (by message_id: delivery is at least once) and notes when each
    message's sequence-number Observation arrived."""

    def __init__(self, broker_url: str, exchange: str, queue_name: str) -> None:
        super().__init__(daemon=True, name="event-counter")
        self.broker_url, self.exchange, self.queue_name = broker_url, exchange, queue_name
        self.ready = threading.Event()
        self.error: str | None = None
        self.count = 0
        self.copies = 0
        self.last_at = 0.0
        self.times: list[float] = []  # arrival of each distinct event
        self.seq_at: dict[int, float] = {}
        self.sample: dict[str, Any] | None = None
        self._seen: set[str] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            params = pika.URLParameters(self.broker_url)
            params.socket_timeout = 10
            conn = pika.BlockingConnection(params)
            channel = conn.channel()
            channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
            channel.queue_declare(self.queue_name, durable=True)
            channel.queue_bind(self.queue_name, self.exchange, routing_key="fhir.Observation.*")
            channel.basic_qos(prefetch_count=2000)
            channel.basic_consume(self.queue_name, self._on_event, auto_ack=True)
            self.ready.set()
            while not self._halt.is_set():
                conn.process_data_events(time_limit=0.2)
            conn.close()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()

    def _on_event(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        now = time.time()
        key = properties.message_id or str(hash(body))
        if key in self._seen:
            self.copies += 1
            return
        self._seen.add(key)
        self.count += 1
        self.last_at = now
        self.times.append(now)
        seq = seq_of_event(body)
        if seq is not None:
            self.seq_at.setdefault(seq, now)
            if self.sample is None:
                self.sample = json.loads(body)

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


# --- CPU by process -----------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, float, float] | None:
    """(ppid, comm, own CPU s, CPU s of reaped children) from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # After the comm: state ppid ... utime(14) stime(15) cutime(16) cstime(17), 1-based overall.
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK
    return int(fields[1]), comm, own, reaped


def _what(pid: int, comm: str) -> str:
    """A short name for a child process: serve's children by the name they give themselves
    (core.children), multiprocessing's helpers by role, else its comm."""
    if comm.startswith("sc-"):
        return comm
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return comm
    for role in ("resource_tracker", "forkserver", "spawn_main", "celery"):
        if role in cmdline:
            return role
    return comm


def cpu_snapshot(roots: dict[str, int]) -> dict[str, tuple[float, float]]:
    """CPU seconds (own, reaped children) of each root process and all its descendants,
    labelled ``root`` and ``root/<comm>[pid]``."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in stats.items():
        children.setdefault(ppid, []).append(pid)
    snapshot: dict[str, tuple[float, float]] = {}
    for label, root in roots.items():
        if root not in stats:
            continue
        snapshot[label] = stats[root][2:]
        todo = list(children.get(root, []))
        while todo:
            pid = todo.pop()
            snapshot[f"{label}/{_what(pid, stats[pid][1])}[{pid}]"] = stats[pid][2:]
            todo += children.get(pid, [])
    return snapshot


AUDIT_KEY = "pipeline.cpu_ms.store.audit"


def audit_share(stages: dict[str, float]) -> float | None:
    """The audit entry's part of a pipeline batch's CPU time ("store.audit" is inside "store")."""
    if AUDIT_KEY not in stages:
        return None
    total = sum(ms for key, ms in stages.items() if key != AUDIT_KEY)
    return stages[AUDIT_KEY] / total if total else None


def cpu_per_message(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], messages: int
) -> dict[str, float]:
    """ms per message; a process that started during the phase counts from zero, and
    children that exited are in their parent's ``+reaped`` line."""
    result: dict[str, float] = {}
    for label, (own, reaped) in after.items():
        own0, reaped0 = before.get(label, (0.0, 0.0))
        result[label] = round((own - own0) * 1e3 / messages, 3)
        if reaped - reaped0 > 0:
            result[f"{label}+reaped"] = round((reaped - reaped0) * 1e3 / messages, 3)
    return result


# --- deployments --------------------------------------------------------------------------


@dataclass
class Deployment:
    name: str
    workdir: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex + uuid.uuid4().hex)
    procs: dict[str, Proc] = field(default_factory=dict)
    mllp_port: int = 0
    api_port: int = 0
    events: EventCounter | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def env(self) -> dict[str, str]:
        return clean_env(
            SIDECAR_API_PORT="0",
            SIDECAR_API_TOKENS=json.dumps({"bench": self.token}),
            SIDECAR_DATA_DIR=str(self.data_dir),
        )

    def start_serve(self) -> None:
        argv = [
            *sidecar_cli(),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--mllp-port",
            "0",
            "--host",
            "127.0.0.1",
        ]
        serve = self.procs["serve"] = Proc("serve", argv, self.env(), self.workdir / "serve.log")
        line = serve.json_line(120)
        self.mllp_port, self.api_port = int(line["mllp_port"]), int(line.get("api_port") or 0)
        if not self.api_port:
            raise BenchError("serve did not start the HTTP API (api_port missing from its listening line)")

    def roots(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def processed_at(self, run: str) -> dict[int, float]:
        """Sequence number → the inbox's processed_at (epoch seconds) of this run's entries."""
        raise NotImplementedError

    def stop(self) -> dict[str, int | None]:
        codes = {}
        for name in ["serve", *[n for n in self.procs if n != "serve"]]:
            if name in self.procs:
                codes[name] = self.procs[name].stop(60)
        if self.events is not None:
            self.events.stop()
        return codes

    def tails(self) -> str:
        return "".join(proc.tail() for proc in self.procs.values())


class Embedded(Deployment):
    def start(self, args: argparse.Namespace) -> None:
        self.data_dir.mkdir(parents=True)
        self.start_serve()

    def processed_at(self, run: str) -> dict[int, float]:
        # Read-only, after the phase: the bench never writes to the sidecar's database.
        uri = f"file:{self.data_dir / 'sidecar.db'}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=30) as conn:
            rows = conn.execute(INBOX_QUERY.replace("%s", "?"), (f"{run}-%",)).fetchall()
        return {seq_of_control_id(cid): _epoch(at) for cid, at in rows}


class Production(Deployment):
    def __init__(self, name: str, workdir: Path, database_url: str, broker_url: str, admin_url: str) -> None:
        super().__init__(name, workdir)
        self.database_url, self.broker_url, self.admin_url = database_url, broker_url, admin_url

    def env(self) -> dict[str, str]:
        return super().env() | {
            "SIDECAR_DATABASE_URL": self.database_url,
            "SIDECAR_BROKER_URL": self.broker_url,
            "SIDECAR_PIPELINE_LANES": str(LANES),
        }

    def start(self, args: argparse.Namespace) -> None:
        self.data_dir.mkdir(parents=True)
        # The subscriber's queue exists before anything is published.
        self.events = EventCounter(self.broker_url, "sidecar.events", "bench-e2e-observations")
        self.events.start()
        self.events.ready.wait(30)
        if self.events.error or not self.events.ready.is_set():
            raise BenchError(f"event subscriber: {self.events.error or 'not ready in 30s'}")
        self.start_serve()
        for name, lanes in WORKERS.items():
            argv = [*sidecar_cli(), "worker", *(a for k in lanes for a in ("--lane", str(k)))]
            self.procs[name] = Proc(name, argv, self.env(), self.workdir / f"{name}.log")
        self._wait_for_lane_consumers(timeout=120)

    def _wait_for_lane_consumers(self, timeout: float) -> None:
        """Until every lane queue has its worker (Celery takes seconds to start)."""
        conn = pika.BlockingConnection(pika.URLParameters(self.broker_url))
        try:
            deadline = time.monotonic() + timeout
            while True:
                missing = []
                for lane in range(LANES):
                    channel = conn.channel()
                    try:
                        ok = channel.queue_declare(f"sidecar.pipeline.{lane}", passive=True)
                        if ok.method.consumer_count < 1:
                            missing.append(lane)
                        channel.close()
                    except pika.exceptions.ChannelClosedByBroker:
                        missing.append(lane)  # not declared yet
                if not missing:
                    return
                for name in WORKERS:
                    if not self.procs[name].alive():
                        raise BenchError(f"{name} exited{self.procs[name].tail()}")
                if time.monotonic() > deadline:
                    raise BenchError(f"lanes {missing} have no consumer after {timeout:.0f}s{self.tails()}")
                time.sleep(0.5)
        finally:
            conn.close()

    def processed_at(self, run: str) -> dict[int, float]:
        with psycopg.connect(_libpq(self.database_url)) as conn:
            rows = conn.execute(INBOX_QUERY, (f"{run}-%",)).fetchall()
        return {seq_of_control_id(cid): at.timestamp() for cid, at in rows}


def _epoch(value: Any) -> float:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@contextmanager
def fresh_vhost(amqp_base: str) -> Iterator[str]:
    vhost = f"bench-e2e-{uuid.uuid4().hex[:10]}"
    try:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{amqp_base.rstrip('/')}/{vhost}"
    finally:
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, capture_output=True, timeout=60
        )


def _rabbitmqctl(*args: str, attempts: int = 6) -> None:
    """rabbitmqctl, retried: the broker may be restarting (the test suite restarts it)."""
    for attempt in range(attempts):
        done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            return
        if attempt == attempts - 1:
            raise BenchError(
                f"rabbitmqctl {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-500:]}"
            )
        time.sleep(5)


# --- phases -------------------------------------------------------------------------------


def wait_until(
    what: str,
    done: Callable[[], bool],
    progress: Callable[[], tuple[float, ...]],
    timeout: float,
    stall: float,
    deployment: Deployment,
    tick: Callable[[], None] | None = None,
    interval: float = 0.05,
) -> None:
    """Until ``done()``; fails after ``timeout``, or after ``stall`` seconds in which
    ``progress()`` did not change, or when a sidecar process exited."""
    deadline = time.monotonic() + timeout
    last, last_change = progress(), time.monotonic()
    while not done():
        if tick is not None:
            tick()
        now = time.monotonic()
        current = progress()
        if current != last:
            last, last_change = current, now
        for proc in deployment.procs.values():
            if not proc.alive():
                raise BenchError(f"{what}: {proc.name} exited ({proc.popen.returncode}){proc.tail()}")
        if now > deadline:
            raise BenchError(f"{what}: not done within {timeout:.0f}s (at {current}){deployment.tails()}")
        if now - last_change > stall:
            raise BenchError(f"{what}: no progress for {stall:.0f}s (at {current}){deployment.tails()}")
        time.sleep(interval)


def _done_count(status: dict[str, float]) -> float:
    return status.get("inbox.processed", 0.0) + status.get("inbox.failed", 0.0)


def timeout_for(messages: int, args: argparse.Namespace) -> float:
    return 120.0 + messages / float(args.min_rate)


def measure_map_only(args: argparse.Namespace) -> dict[str, Any]:
    from mapping import MappingOptions, map_message

    count = min(args.messages, 5000)
    texts = [message(seq, "maponly", args.patients).decode() for seq in range(count)]
    options = MappingOptions(validate=False)
    for text in texts[:50]:  # first-use imports and caches, as the warm-up does for the sidecar
        map_message(text, options)
    started = time.perf_counter()
    for text in texts:
        map_message(text, options)
    elapsed = time.perf_counter() - started
    return {"messages": count, "rate": count / elapsed}


def measure_echo(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with mllp_server("echo", workdir) as port:
        client = Client(
            "load", workdir, port, run=uuid.uuid4().hex[:6], count=args.messages, patients=args.patients,
            connections=args.connections, in_flight=args.in_flight,
        ).ready()  # fmt: skip
        client.go()
        result = client.result(timeout_for(args.messages, args))
    _check_client("echo load", result)
    return {
        "rate": result["ack_rate"],
        "ack_p50_ms": result["ack_p50_ms"],
        "ack_p99_ms": result["ack_p99_ms"],
        "client_cpu_ms_per_msg": round(result["cpu_s"] * 1e3 / max(1, result["acked"]), 3),
    }


def _check_client(what: str, result: dict[str, Any]) -> None:
    if result.get("error"):
        raise BenchError(f"{what}: {result['error']}")


def waiting_alone(args: argparse.Namespace, workdir: Path, url: str | None) -> dict[str, Any]:
    """The waiting sender against bench/mllp_server.py's sidecar intake alone, for the whole
    ``--waiting-seconds`` (it stores, no pipeline: no message cap is needed)."""
    with mllp_server("sidecar", workdir, url) as port:
        client = Client(
            "waiting", workdir, port, run=uuid.uuid4().hex[:6], first=WAITING_BASE, patients=args.patients,
            max_messages=round(args.waiting_seconds * 5_000), max_seconds=args.waiting_seconds,
        ).ready(300)  # fmt: skip
        client.go()
        result = client.result(args.waiting_seconds + 120)
    _check_client("waiting sender (listener alone)", result)
    return result


def warm_up(deployment: Deployment, poller: StatusPoller, args: argparse.Namespace, workdir: Path) -> None:
    if args.warmup <= 0:
        return
    client = Client(
        "load", workdir, deployment.mllp_port, run=uuid.uuid4().hex[:6], first=WARMUP_BASE, count=args.warmup,
        patients=args.patients, connections=1, in_flight=args.in_flight,
    ).ready()  # fmt: skip
    done0 = _done_count(poller.latest())
    client.go()
    result = client.result(timeout_for(args.warmup, args))
    _check_client("warm-up", result)
    settle(deployment, poller, args, "warm-up", done0 + _stored(result))
    if deployment.events is not None:
        events = deployment.events
        want = OBX_PER_ORU * result["oru_stored"]
        wait_until(
            "warm-up events", lambda: events.count >= want, lambda: (events.count,),
            timeout_for(args.warmup, args), args.stall, deployment,
        )  # fmt: skip


def settle(
    deployment: Deployment, poller: StatusPoller, args: argparse.Namespace, what: str, at_least: float
) -> None:
    """Until /status says everything received is through the pipeline (and at least
    ``at_least`` entries are)."""

    def done() -> bool:
        s = poller.latest()
        return bool(s) and s.get("inbox.pending", 1) == 0 and _done_count(s) >= at_least

    wait_until(
        what,
        done,
        lambda: (_done_count(poller.latest()),),
        timeout_for(int(at_least), args),
        args.stall,
        deployment,
    )


def _stored(result: dict[str, Any]) -> int:
    """Messages a client got a positive ACK for: those are in the inbox."""
    return sum(n for code, n in result["codes"].items() if code in ("AA", "CA"))


def _first_at(times: list[float], threshold: int) -> float | None:
    return times[int(threshold) - 1] if 0 < threshold <= len(times) else None


def throughput(
    deployment: Deployment, poller: StatusPoller, args: argparse.Namespace, workdir: Path, run: str
) -> dict[str, Any]:
    base = poller.latest()
    done0 = _done_count(base)
    events = deployment.events
    events0 = events.count if events is not None else 0
    load = Client(
        "load", workdir, deployment.mllp_port, run=run, first=0, count=args.messages, patients=args.patients,
        connections=args.connections, in_flight=args.in_flight, timeout=120,
    ).ready()  # fmt: skip
    waiting = None
    if not args.skip_waiting:
        waiting = Client(
            "waiting", workdir, deployment.mllp_port, run=run, first=WAITING_BASE, patients=args.patients,
            max_messages=args.waiting_max, max_seconds=args.waiting_seconds,
        ).ready()  # fmt: skip
    state: dict[str, Any] = {"load": None, "waiting": None, "started": None}

    def processed() -> float:
        return _done_count(poller.latest()) - done0

    def tick() -> None:
        if state["load"] is None and (loaded := load.proc.poll_json()) is not None:
            _check_client("load", loaded)
            state["load"] = loaded
        if waiting is None or state["waiting"] is not None:
            return
        # The waiting sender starts when the load's ACKs are all back: from then on the
        # listener has nothing else to do, and the pipeline works off the backlog beside it.
        if state["started"] is None and state["load"] is not None:
            waiting.go()
            state["started"] = time.time()
        elif state["started"] is not None and (finished := waiting.proc.poll_json()) is not None:
            _check_client("waiting sender (during the run)", finished)
            state["waiting"] = finished

    def expected() -> tuple[int, int] | None:
        """(messages, Observation events) the phase ends with, once the senders are done."""
        if state["load"] is None or (waiting is not None and state["waiting"] is None):
            return None
        senders = [state["load"], *([state["waiting"]] if state["waiting"] else [])]
        return sum(_stored(r) for r in senders), OBX_PER_ORU * sum(r["oru_stored"] for r in senders)

    def done() -> bool:
        want = expected()
        return (
            want is not None
            and processed() >= want[0]
            and (events is None or events.count - events0 >= want[1])
        )

    def progress() -> tuple[float, ...]:
        return (processed(), events.count if events else 0, state["load"]["acked"] if state["load"] else -1)

    before, status_before = cpu_snapshot(deployment.roots()), poller.latest()
    load.go()
    try:
        wait_until(
            "throughput phase", done, progress, timeout_for(args.messages + args.waiting_max, args),
            args.stall, deployment, tick,
        )  # fmt: skip
        ended = time.time()
    finally:
        after = cpu_snapshot(deployment.roots())
        for client in (load, waiting):
            if client is not None:
                client.proc.stop(5)
    status_after = poller.latest()
    if any(key.startswith("pipeline.cpu_ms.") for key in status_after):
        # The pipeline writes its stage counters about once a second: the last batch's too.
        time.sleep(STAGE_STATS_LAG_S)
        status_after = poller.fetch() or status_after
    want = expected()
    assert want is not None
    messages = want[0]
    loaded = state["load"]
    first_send = loaded["first_send"]
    stored_load = _stored(loaded)
    # The end: when as many entries as the load stored are through. The waiting sender's
    # messages (sent mid-run) are processed among them, so counting them out keeps the
    # figure the load's without letting a late waiting window stretch the run.
    end = next(
        (t for t, s in poller.samples if t >= first_send and _done_count(s) - done0 >= stored_load), ended
    )
    result: dict[str, Any] = {
        "load_messages": stored_load,
        "waiting_messages": messages - stored_load,
        "messages": messages,
        "first_send": first_send,
        "processed_s": end - first_send,
        "e2e_rate_processed": stored_load / (end - first_send),
        "all_processed_s": ended - first_send,
        "ack_rate": loaded["ack_rate"],
        "ack_p50_ms": loaded["ack_p50_ms"],
        "ack_p99_ms": loaded["ack_p99_ms"],
        "ack_codes": loaded["codes"],
        "client_cpu_ms_per_msg": round(loaded["cpu_s"] * 1e3 / max(1, loaded["acked"]), 3),
        "cpu_ms_per_msg": cpu_per_message(before, after, messages),
        "stage_cpu_ms_per_msg": {
            key: round((value - status_before.get(key, 0.0)) / messages, 3)
            for key, value in status_after.items()
            if key.startswith("pipeline.cpu_ms.")
        },
        "series": series(poller, loaded, first_send, ended, base),
        "pending_peak": max(
            (s.get("inbox.pending", 0) for t, s in poller.samples if first_send <= t <= ended), default=0
        ),
    }
    if state["waiting"] is not None:
        w = state["waiting"]
        # The backlog the pipeline had during the window (to the first answer after it: a
        # window can be shorter than the poll interval).
        in_window = [
            s.get("inbox.pending", 0)
            for t, s in poller.samples
            if w["started"] <= t <= w["ended"] + args.poll
        ]
        result["waiting"] = w | {
            "started_s": w["started"] - first_send,
            "pending_min": min(in_window, default=None),  # 0: the pipeline ran dry during the window
        }
    if events is not None:
        load_events = OBX_PER_ORU * loaded["oru_stored"]
        last = _first_at(events.times, events0 + load_events) or events.last_at
        result |= {
            "events": events.count - events0,
            "events_expected": want[1],
            "event_copies": events.copies,
            "last_event_s": last - first_send,
            "e2e_rate_events": stored_load / (last - first_send),
        }
    return result


def series(
    poller: StatusPoller, load: dict[str, Any], first_send: float, end: float, base: dict[str, float]
) -> list[dict[str, float]]:
    """One row a second: t, the load's ACKs so far, and the last /status counts by then."""
    buckets = load["ack_buckets"]
    per_second = max(1, round(1.0 / 0.1))
    rows = []
    samples = [(t, s) for t, s in poller.samples if t >= first_send - 1]
    index = 0
    for second in range(math.ceil(end - first_send) + 1):
        at = first_send + second
        while index + 1 < len(samples) and samples[index + 1][0] <= at:
            index += 1
        status = samples[index][1] if samples and samples[index][0] <= at else base
        rows.append(
            {
                "t": second,
                "acked": sum(buckets[: (second * per_second)]),
                "received": status.get("inbox.received", 0) - base.get("inbox.received", 0),
                "processed": _done_count(status) - _done_count(base),
                "pending": status.get("inbox.pending", 0),
            }
        )
    return rows


def steady(
    deployment: Deployment, poller: StatusPoller, args: argparse.Namespace, workdir: Path, run: str
) -> dict[str, Any]:
    done0 = _done_count(poller.latest())
    events0 = deployment.events.count if deployment.events is not None else 0
    client = Client(
        "steady", workdir, deployment.mllp_port, run=run, first=STEADY_BASE, patients=args.patients,
        rate=args.steady_rate, seconds=args.steady_seconds, in_flight=args.steady_in_flight,
    ).ready()  # fmt: skip
    before = cpu_snapshot(deployment.roots())
    client.go()
    result = client.result(args.steady_seconds + timeout_for(0, args))
    after = cpu_snapshot(deployment.roots())
    _check_client("steady sender", result)
    acks = {int(seq): float(t) for seq, t in result["acks"] if seq >= 0}
    settle(deployment, poller, args, "steady phase", done0 + _stored(result))
    if deployment.events is not None:
        events = deployment.events
        want = events0 + OBX_PER_ORU * result["oru_stored"]
        wait_until(
            "steady phase events", lambda: events.count >= want, lambda: (events.count,),
            timeout_for(result["acked"], args), args.stall, deployment,
        )  # fmt: skip
    processed = deployment.processed_at(run)
    out: dict[str, Any] = {
        "rate": args.steady_rate,
        "seconds": args.steady_seconds,
        "acked": result["acked"],
        "achieved_rate": result["achieved_rate"],
        "ack_p50_ms": result["ack_p50_ms"],
        "ack_p99_ms": result["ack_p99_ms"],
        "ack_to_processed": latency([processed[s] - t for s, t in acks.items() if s in processed], len(acks)),
        # While the sender ran: at a fixed rate, the CPU left over is what latency has to work with.
        "cpu_ms_per_msg": cpu_per_message(before, after, max(1, result["acked"])),
        "ack_to_processed_by_second": by_second(
            [(t, processed[s] - t) for s, t in acks.items() if s in processed]
        ),
    }
    if deployment.events is not None:
        seq_at = deployment.events.seq_at
        orus = [s for s in acks if not is_adt(s)]
        out["ack_to_event"] = latency([seq_at[s] - acks[s] for s in orus if s in seq_at], len(orus))
    return out


def by_second(latencies: list[tuple[float, float]]) -> list[tuple[int, float, float]]:
    """(second of the phase, median ms, worst ms) of what was ACKed in that second: where the
    slow ones bunch (a batch that ran long, a checkpoint) and whether a backlog built up."""
    if not latencies:
        return []
    start = min(at for at, _ in latencies)
    buckets: dict[int, list[float]] = {}
    for at, value in latencies:
        buckets.setdefault(int(at - start), []).append(value)
    return [
        (second, round(statistics.median(values) * 1e3, 1), round(max(values) * 1e3, 1))
        for second, values in sorted(buckets.items())
    ]


def latency(values: list[float], expected: int) -> dict[str, Any]:
    if not values:
        return {"matched": 0, "expected": expected}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] * 1e3, 1)

    return {
        "matched": len(ordered),
        "expected": expected,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1] * 1e3, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1e3, 1),
    }


def run_mode(mode: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    workdir = root / mode
    workdir.mkdir()
    out: dict[str, Any] = {"run": uuid.uuid4().hex[:6], "loadavg_before": _loadavg()}
    try:
        _run_mode(mode, args, workdir, out)
    except BenchError as exc:
        out["error"] = str(exc)
    except Exception as exc:  # a server refused, a file vanished...: reported, and the next mode runs
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _run_mode(mode: str, args: argparse.Namespace, workdir: Path, out: dict[str, Any]) -> None:
    run = out["run"]
    with ExitStack() as stack:
        deployment: Deployment
        if mode == "embedded":
            alone_url = None
            deployment = Embedded(mode, workdir)
        else:
            alone_url = stack.enter_context(fresh_pg(args.pg)) if not args.skip_waiting else None
            database_url = stack.enter_context(fresh_pg(args.pg))
            broker_url = stack.enter_context(fresh_vhost(args.amqp))
            deployment = Production(mode, workdir, database_url, broker_url, args.pg)
        if not args.skip_waiting:
            print(f"[{mode}] waiting sender against the listener alone ...", flush=True)
            out["waiting_alone"] = waiting_alone(args, workdir, alone_url)
        print(
            f"[{mode}] starting {', '.join(['serve', *(WORKERS if mode == 'production' else [])])} ...",
            flush=True,
        )
        stack.callback(lambda: out.__setitem__("exit_codes", deployment.stop()))
        deployment.start(args)
        poller = StatusPoller(deployment.api_port, deployment.token, args.poll)
        poller.start()
        stack.callback(poller.stop)
        if poller.fetch() is None:
            raise BenchError(f"/status: {poller.last_error}")
        warm_up(deployment, poller, args, workdir)
        print(f"[{mode}] throughput: {args.messages} messages ...", flush=True)
        out["throughput"] = throughput(deployment, poller, args, workdir, run)
        if deployment.events is not None and deployment.events.sample is not None:
            out["sample_seq_observation"] = deployment.events.sample.get("data", {}).get("valueQuantity")
        if not args.skip_steady:
            print(
                f"[{mode}] steady: {args.steady_rate:g} msg/s for {args.steady_seconds:g} s ...", flush=True
            )
            out["steady"] = steady(deployment, poller, args, workdir, run)
        out["status_errors"] = poller.errors
        out["status_last_error"] = poller.last_error
        out["loadavg_after"] = _loadavg()


# --- report -------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    return _fmt(value, 2 if value is not None and value < 100 else 0)


def report(results: dict[str, Any]) -> None:
    args = results["config"]
    echo = results["baselines"].get("echo", {}).get("rate")
    map_only = results["baselines"].get("map_only", {}).get("rate")
    print(
        f"\nbench-e2e: {args['messages']} messages ({args['patients']} patients, 1 in 10 ADT), "
        f"{args['connections']} connections x {args['in_flight']} in flight"
    )
    loads = ", ".join(f"{mode} {m.get('loadavg_before')}" for mode, m in results["modes"].items())
    print(f"  load average at each mode's start: {loads} ({os.cpu_count()} CPUs)")
    print(f"  {'':50s} {'msg/s':>9s} {'of echo':>8s} {'of map':>8s} {'p50 ms':>10s} {'p99 ms':>10s}")

    def row(
        label: str,
        rate: float | None,
        p50: float | None = None,
        p99: float | None = None,
        note: str = "",
        ratios: str = "echo map",
    ) -> None:
        # Ratios only where they mean something: a waiting sender or a fixed rate is no throughput.
        of_echo = f"{rate / echo:8.3f}" if rate and echo and "echo" in ratios else f"{'':8s}"
        of_map = f"{rate / map_only:8.3f}" if rate and map_only and "map" in ratios else f"{'':8s}"
        numbers = f"{_fmt(rate):>9s} {of_echo} {of_map} {_ms(p50):>10s} {_ms(p99):>10s}"
        print(f"  {label:50s} {numbers}  {note}".rstrip())

    row("echo ceiling (ACKs, same load client)", echo, results["baselines"].get("echo", {}).get("ack_p50_ms"),
        results["baselines"].get("echo", {}).get("ack_p99_ms"))  # fmt: skip
    row("map-only (parse + map, no validation, 1 proc)", map_only)
    for mode, m in results["modes"].items():
        if "error" in m:
            print(f"  {mode}: FAILED: {m['error'].splitlines()[0]}")
        t = m.get("throughput")
        if not t:
            continue
        msgs = f"{t['load_messages']} + {t['waiting_messages']} waiting"
        row(
            f"{mode}: end to end, to the load processed",
            t["e2e_rate_processed"],
            note=f"{msgs}, {t['processed_s']:.1f} s",
        )
        if "e2e_rate_events" in t:
            row(f"{mode}: end to end, to the load's last event", t["e2e_rate_events"],
                note=f"{t['events']}/{t['events_expected']} events, {t['last_event_s']:.1f} s")  # fmt: skip
        codes = ", ".join(f"{k} {v}" for k, v in sorted(t["ack_codes"].items()))
        row(
            f"{mode}: ACKs during the run (load)",
            t["ack_rate"],
            t["ack_p50_ms"],
            t["ack_p99_ms"],
            codes,
            "echo",
        )
        during, alone = t.get("waiting"), m.get("waiting_alone")
        if during and alone:
            note = f"{during['timed']} msgs from t={during['started_s']:.1f} s"
            note += f", backlog >= {_fmt(during['pending_min'])}"
            label = f"{mode}: one waiting sender"
            row(
                f"{label}, during the run",
                during["rate"],
                during["rtt_p50_ms"],
                during["rtt_p99_ms"],
                note,
                "",
            )
            note = f"{alone['timed']} msgs"
            row(f"{label}, listener alone", alone["rate"], alone["rtt_p50_ms"], alone["rtt_p99_ms"], note, "")
            ratio = during["rate"] / alone["rate"]
            verdict = "meets" if ratio >= 0.8 else "BELOW"
            print(f"  {label}: during / alone = {ratio:.2f} ({verdict} the 0.80 acceptance)")
        steady_result = m.get("steady")
        if steady_result:
            label = f"{mode}: steady {steady_result['rate']:g} msg/s"
            for key, what in (("ack_to_processed", "ACK -> processed"), ("ack_to_event", "ACK -> event")):
                if key not in steady_result:
                    continue
                lat = steady_result[key]
                note = f"{lat['matched']}/{lat['expected']} matched, max {_fmt(lat.get('max_ms'))} ms"
                rate = steady_result["achieved_rate"]
                row(f"{label}, {what}", rate, lat.get("p50_ms"), lat.get("p99_ms"), note, "")
    for mode, m in results["modes"].items():
        t = m.get("throughput")
        if not t:
            continue
        print(f"\n{mode}: CPU ms per message during the throughput phase ({t['messages']} messages)")
        for label, ms in sorted(t["cpu_ms_per_msg"].items()):
            print(f"  {label:40s} {ms:9.3f}")
        print(f"  {'load client (bench)':40s} {t['client_cpu_ms_per_msg']:9.3f}")
        for key, ms in sorted(t["stage_cpu_ms_per_msg"].items()):
            print(f"  {key:40s} {ms:9.3f}   (/status)")
        if not t["stage_cpu_ms_per_msg"]:
            print("  (/status exposes no pipeline.cpu_ms.<stage> keys)")
        if (share := audit_share(t["stage_cpu_ms_per_msg"])) is not None:
            print(f"  audit entry per batch: {share:.2%} of the batch's CPU time (issue 21: under 5%)")
        rows = t["series"]
        step = max(1, math.ceil(len(rows) / 40))
        print(f"\n{mode}: backlog over time (every {step} s; peak pending {t['pending_peak']:.0f})")
        print(f"  {'t s':>6s} {'acked':>8s} {'received':>9s} {'processed':>10s} {'pending':>8s}")
        for r in rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else []):
            counts = f"{r['received']:9.0f} {r['processed']:10.0f} {r['pending']:8.0f}"
            print(f"  {r['t']:6d} {r['acked']:8d} {counts}")
    for mode, m in results["modes"].items():
        steady_result = m.get("steady")
        if not steady_result or "cpu_ms_per_msg" not in steady_result:
            continue
        print(f"\n{mode}: CPU ms per message during the steady phase ({steady_result['acked']} messages)")
        for label, ms in sorted(steady_result["cpu_ms_per_msg"].items()):
            print(f"  {label:40s} {ms:9.3f}")
        seconds = steady_result.get("ack_to_processed_by_second", [])
        if seconds:
            print(f"{mode}: ACK -> processed by second of the steady phase (median / worst ms)")
            print("  " + "  ".join(f"{t}:{p50:.0f}/{worst:.0f}" for t, p50, worst in seconds))


def _loadavg() -> list[float]:
    """The machine's 1/5/15-minute load: other work on it makes every figure here noisier."""
    return [round(x, 2) for x in os.getloadavg()]


def _local(url: str, what: str) -> None:
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"{what} must be on this machine (127.0.0.1), not {host}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000, help="messages of the throughput phase")
    parser.add_argument("--mode", choices=["embedded", "production", "both"], default="both")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=8, help="frames in flight per connection")
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--steady-rate", type=float, default=300.0)
    parser.add_argument("--steady-seconds", type=float, default=20.0)
    parser.add_argument(
        "--steady-in-flight", type=int, default=64,
        help="most frames the steady sender has in flight (its rate holds while ACKs are slow)",
    )  # fmt: skip
    parser.add_argument("--skip-steady", action="store_true")
    parser.add_argument("--skip-waiting", action="store_true")
    parser.add_argument(
        "--waiting-seconds", type=float, default=3.0, help="longest window of the waiting sender"
    )
    parser.add_argument(
        "--waiting-max", type=int, default=None,
        help="most messages the waiting sender sends (default: a fifth of --messages, at least 100): "
        "the pipeline has to process them too",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=50, help="messages sent and processed before timing")
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between GET /status")
    parser.add_argument(
        "--min-rate", type=float, default=3.0,
        help="slowest end-to-end msg/s the phase timeouts allow for (timeout = 120 s + messages / this)",
    )  # fmt: skip
    parser.add_argument(
        "--stall", type=float, default=180.0, help="fail a phase after this long without progress"
    )
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test", help="admin URL")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672", help="broker, without vhost")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, databases' files)"
    )
    args = parser.parse_args()
    if args.waiting_max is None:
        args.waiting_max = max(100, args.messages // 5)
    modes = ["embedded", "production"] if args.mode == "both" else [args.mode]
    if "production" in modes:
        _local(args.pg, "--pg")
        _local(args.amqp, "--amqp")

    # SIGTERM (e.g. make interrupted) unwinds like Ctrl-C: processes stopped, databases dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    started = time.monotonic()
    results: dict[str, Any] = {"config": vars(args) | {"json": str(args.json)}, "baselines": {}, "modes": {}}
    failed = False
    try:
        print("baselines: map-only, echo ceiling ...", flush=True)
        results["baselines"]["map_only"] = measure_map_only(args)
        try:
            results["baselines"]["echo"] = measure_echo(args, root)
        except BenchError as exc:
            failed = True
            results["baselines"]["echo"] = {"error": str(exc)}
        for mode in modes:
            mode_started = time.monotonic()
            results["modes"][mode] = run_mode(mode, args, root)
            if "error" in results["modes"][mode]:
                failed = True
                print(f"[{mode}] FAILED: {results['modes'][mode]['error']}", file=sys.stderr, flush=True)
            results["modes"][mode]["wall_s"] = round(time.monotonic() - mode_started, 1)
    finally:
        for proc in STARTED:
            if proc.alive():
                proc.stop(10)
        results["wall_s"] = round(time.monotonic() - started, 1)
        if args.keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report(results)
    per_mode = ", ".join(f"{mode} {m.get('wall_s', 0):.0f} s" for mode, m in results["modes"].items())
    print(f"\nwall time {results['wall_s']:.0f} s ({per_mode})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
