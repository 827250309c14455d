"""The two ways the sidecar runs, behind one small interface, so the same end-to-end
test runs on both: embedded (SQLite + in-process pipeline, events on the local bus)
and production (PostgreSQL + RabbitMQ: `sidecar serve`, `sidecar worker` and
`sidecar sandbox` as real processes, events consumed from a real RabbitMQ queue)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import psycopg
from sqlalchemy.engine import make_url

from connectors import MllpClient
from core.db import Database
from core.settings import Settings
from sidecar.app import SidecarApp
from worker.publishers import LocalBus, OutgoingEvent, pika_parameters

REPO = Path(__file__).resolve().parents[1]


def run_sidecar(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """`sidecar ARGS` as a user runs it, run to its end; ``env`` adds to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def serve_process(data_dir: Path, **popen: Any) -> tuple[subprocess.Popen[str], int]:
    """`sidecar serve` as a user starts it, embedded on ``data_dir`` with a free MLLP port,
    and that port (from the first line it prints). ``popen``: more for subprocess.Popen."""
    options: dict[str, Any] = {"stderr": subprocess.PIPE, **popen}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(data_dir), "--mllp-port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        **options,
    )
    assert proc.stdout is not None
    try:
        return proc, int(json.loads(proc.stdout.readline())["mllp_port"])
    except BaseException:
        proc.kill()
        raise


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def msa(ack: bytes) -> list[str]:
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA"):
            return segment.decode().split("|")
    raise AssertionError(f"no MSA in ACK {ack!r}")


class Embedded:
    """SidecarApp in this process, its asyncio loop on a thread."""

    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        self.settings = Settings(
            data_dir=data_dir, mllp_port=0, summary_coalesce_s=0.2, relay_interval_s=0.05, **overrides
        )
        self.bus = LocalBus()
        self.events: list[bytes] = []
        self.bus.subscribe(self._collect)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.app: SidecarApp | None = None
        self.db = Database(self.settings)

    def _collect(self, event: OutgoingEvent) -> None:
        self.events.append(event.body)

    def start(self) -> None:
        self._thread.start()
        self.app = SidecarApp(self.settings, bus=self.bus)
        asyncio.run_coroutine_threadsafe(self.app.start(), self._loop).result(30)

    @property
    def port(self) -> int:
        assert self.app is not None
        return self.app.port

    def settle(self, timeout: float = 60.0) -> None:
        assert self.app is not None
        assert self.app.wait_idle(timeout)

    def deliver(self, *messages: bytes) -> None:
        """Send over one MLLP connection, each answered AA, then wait until processed."""
        with MllpClient().connect("127.0.0.1", self.port, timeout=30) as client:
            for message in messages:
                assert msa(client.send(message))[1] == "AA"
        self.settle()

    def event_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(b) for b in self.events]

    def stop(self) -> None:
        if self.app is not None:
            asyncio.run_coroutine_threadsafe(self.app.stop(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self.db.dispose()


class Production:
    """serve + worker + sandbox as separate processes on PostgreSQL and RabbitMQ."""

    def __init__(
        self,
        data_dir: Path,
        database_url: str,
        broker_url: str,
        *,
        lanes_per_worker: list[list[int]] | None = None,
        binding: str = "#",
        coalesce_s: float = 0.2,
    ) -> None:
        self.data_dir = data_dir
        self.lanes_per_worker = lanes_per_worker or [[]]  # one worker on every lane
        self.binding = binding
        self.env = {
            **os.environ,
            "SIDECAR_DATA_DIR": str(data_dir),
            "SIDECAR_DATABASE_URL": database_url,
            "SIDECAR_BROKER_URL": broker_url,
            "SIDECAR_SUMMARY_COALESCE_S": str(coalesce_s),
            "SIDECAR_RELAY_INTERVAL_S": "0.05",
            "SIDECAR_MLLP_PORT": "0",
        }
        self.settings = Settings(data_dir=data_dir, database_url=database_url, broker_url=broker_url)
        self.db = Database(self.settings)
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.port = 0
        self._events: list[dict[str, Any]] = []
        self._conn: Any = None
        self._channel: Any = None
        self._queue = ""
        self._sandbox_role = ""

    def _connect_subscriber(self) -> None:
        params = pika_parameters(self.env["SIDECAR_BROKER_URL"])
        params.heartbeat = 0  # the test reads only at the end; heartbeats would drop it meanwhile
        self._conn = pika.BlockingConnection(params)
        self._channel = self._conn.channel()
        self._channel.exchange_declare("sidecar.events", exchange_type="topic", durable=True)
        self._channel.queue_declare(self._queue, durable=True)
        self._channel.queue_bind(self._queue, "sidecar.events", routing_key=self.binding)

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        log = open(self.data_dir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", *args],
            env={**self.env, **(env or {})},
            cwd=REPO,
            stdout=subprocess.PIPE if name == "serve" else log,
            stderr=log,
            text=True,
        )
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Subscribe before anything is published. A durable named queue, as a real
        # subscriber has: it outlives a broker restart, and so do the events in it.
        self._queue = f"test-events-{self.data_dir.parent.name}"
        self._connect_subscriber()
        serve = self._spawn("serve", "serve")
        assert serve.stdout is not None
        line = serve.stdout.readline()
        if not line:
            raise AssertionError("serve exited: " + (self.data_dir / "serve.log").read_text())
        self.port = json.loads(line)["mllp_port"]
        for n, lanes in enumerate(self.lanes_per_worker):
            self._spawn(f"worker-{n}", "worker", *(a for k in lanes for a in ("--lane", str(k))))
        # The model zone logs in as its own role, as a site would run it: the database
        # refuses it the identified tables (migration 0005 created the group role).
        self._sandbox_role = f"sandbox_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(_admin_url(self.settings.effective_database_url), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {self._sandbox_role} LOGIN IN ROLE sidecar_model_zone")
        sandbox_url = make_url(self.settings.effective_database_url).set(
            username=self._sandbox_role, password=None
        )
        self._spawn(
            "sandbox",
            "sandbox",
            env={"SIDECAR_SANDBOX_DATABASE_URL": sandbox_url.render_as_string(hide_password=False)},
        )

    def settle(self, timeout: float = 180.0) -> None:
        from sidecar.stats import collect

        def done() -> bool:
            s = collect(self.db)
            return bool(
                s["inbox"]["pending"] == 0
                and s["jobs"]["pending"] == 0
                and s["jobs"]["running"] == 0
                and s["events"]["pending"] == 0
            )

        wait_for(done, timeout, 0.2)

    def event_bodies(self) -> list[dict[str, Any]]:
        for attempt in range(3):
            try:
                while True:
                    method, _props, body = self._channel.basic_get(self._queue, auto_ack=True)
                    if method is None:
                        return list(self._events)
                    self._events.append(json.loads(body))
            except pika.exceptions.AMQPError:
                # The broker was restarted under us: the durable queue kept the events.
                if attempt == 2:
                    raise
                self._connect_subscriber()
        return list(self._events)

    def stop(self) -> dict[str, int]:
        codes: dict[str, int] = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(10)
        if self._conn is not None and self._conn.is_open:
            self._conn.close()
        self.db.dispose()
        if self._sandbox_role:
            with psycopg.connect(_admin_url(self.settings.effective_database_url), autocommit=True) as conn:
                conn.execute(f"DROP ROLE IF EXISTS {self._sandbox_role}")
        return codes

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.data_dir.glob("*.log"))
        )


def _admin_url(sqlalchemy_url: str) -> str:
    """The identified zone's URL in libpq spelling, for role administration."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)
