"""Issue 17, the HTTP API under abuse: half-sent requests from one peer, floods of wrong
tokens, requests that fail inside, numbers out of range and identifiers in search values.

The listener test runs a real `sidecar serve` with 256 file descriptors, so that the
probe's 1,100 half-sent requests at a 1,024 limit scale down to 300 here; the caps and
timeouts are set low (32 connections, 16 per peer, 3 s for a request head): they are
what is tested, not the sizes."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

import sidecar.stats
from core.ratelimit import RateLimitFilter
from core.tables import AuditEntry, Resource
from tests.deployments import REPO, Embedded, msa, wait_for
from tests.fixtures.messages import ADT_A01, encoded

TOKEN = "t0k3n-of-the-abuse-test-client"
OTHER_TOKEN = "t0k3n-of-the-abuse-test-auditor"
MRN = "MRN0049317"  # a value shaped like a medical record number, never ours
FD_LIMIT = 256
HALF_SENT = 300  # more than the serve process has descriptors


def _serve_with_fd_limit(
    data_dir: Path, log_path: Path, **env: str
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """`sidecar serve` (embedded, API on) in a process limited to FD_LIMIT descriptors."""
    launcher = (
        "import resource, runpy, sys;"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, {FD_LIMIT}));"
        "sys.argv = ['sidecar', 'serve'];"
        "runpy.run_module('sidecar', run_name='__main__')"
    )
    environment = {
        **os.environ,
        "SIDECAR_DATA_DIR": str(data_dir),
        "SIDECAR_MLLP_PORT": "0",
        "SIDECAR_API_PORT": "0",
        "SIDECAR_API_TOKENS": json.dumps({"client": TOKEN}),
        **env,
    }
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher],
        env=environment,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise AssertionError("serve exited: " + log_path.read_text()[-4000:])
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _mllp_from(source: str, port: int, message: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0)) as sock:
        sock.sendall(b"\x0b" + message + b"\x1c\r")
        reply = b""
        while not reply.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply.strip(b"\x0b\x1c\r")


class _HalfSent:
    """A connection that sent part of a request head and trickles more of it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"GET /status HTTP/1.1\r\nHost: sidecar\r\n")
        self.sock.setblocking(False)
        self.received = b""
        self.closed = False

    def poll(self) -> None:
        while not self.closed:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                self.closed = True
                return
            if not chunk:
                self.closed = True
            self.received += chunk

    def trickle(self) -> None:
        if not self.closed:
            try:
                self.sock.send(b"X-Trickle: 1\r\n")
            except OSError:
                self.closed = True


def test_half_sent_requests_from_one_peer_leave_the_api_and_mllp_to_others(tmp_path: Path) -> None:
    log_path = tmp_path / "serve.log"
    proc, ports = _serve_with_fd_limit(
        tmp_path / "data",
        log_path,
        SIDECAR_API_MAX_CONNECTIONS="32",
        SIDECAR_API_MAX_CONNECTIONS_PER_PEER="16",
        SIDECAR_API_HEADER_TIMEOUT_S="3",
    )
    attackers: list[_HalfSent] = []
    try:
        before = len(log_path.read_text().splitlines())
        began = time.monotonic()
        attackers = [_HalfSent(ports["api_port"]) for _ in range(HALF_SENT)]
        # A second peer is still served, on the API and on MLLP (same process, same descriptors).
        second = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=20)
        with second:
            answer = second.get(
                f"http://127.0.0.1:{ports['api_port']}/status", headers={"Authorization": f"Bearer {TOKEN}"}
            )
        assert answer.status_code == 200 and "inbox" in answer.json()
        assert msa(_mllp_from("127.0.0.2", ports["mllp_port"], encoded(ADT_A01)))[1] == "AA"

        # Trickling bytes does not extend the time a request head may take: every
        # half-sent connection is closed by the server (refused at once, or timed out).
        def all_closed() -> bool:
            for attacker in attackers:
                attacker.poll()
                attacker.trickle()
            return all(a.closed for a in attackers)

        wait_for(all_closed, timeout=30, interval=0.3)
        assert proc.poll() is None
        # The log stays a few lines, not one per refused connection or failed accept; the
        # refusals are in it (a 503 may not reach a client that sent bytes nobody read).
        written = log_path.read_text().splitlines()[before:]
        # A rate, not a latency: a few lines a second however long a slow machine takes.
        assert len(written) <= 20 + 3 * (time.monotonic() - began), written[:20]
        events = [json.loads(line).get("event") for line in written]
        assert "api.connection_refused" in events and "api.header_timeout" in events
    finally:
        for attacker in attackers:
            attacker.sock.close()
        _stop(proc)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Embedded, str]]:
    """One server for the tests below (starting one takes seconds): the flood comes from
    127.0.0.3, so the throttling it causes leaves the others' 127.0.0.1 alone."""
    dep = Embedded(
        tmp_path_factory.mktemp("api") / "data",
        api_port=0,
        api_tokens={"client": TOKEN, "auditor": OTHER_TOKEN},
        api_auditors=["auditor"],
        api_auth_max_failures=20,
        api_auth_window_s=600,
        api_auth_audit_interval_s=3,
    )
    dep.start()
    try:
        assert dep.app is not None and dep.app.api is not None
        yield dep, f"http://127.0.0.1:{dep.app.api.port}"
    finally:
        dep.stop()


def _entries(dep: Embedded, action: str | None = None, after: int = 0) -> list[AuditEntry]:
    with dep.db.sessions() as s:
        query = select(AuditEntry).where(AuditEntry.seq > after).order_by(AuditEntry.seq)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        return list(s.execute(query).scalars())


def test_a_flood_of_wrong_tokens_is_audited_in_aggregate_and_throttled_per_source(
    api: tuple[Embedded, str],
) -> None:
    dep, base = api
    statuses: list[int] = []
    retry_after: list[str] = []
    flooder = httpx.HTTPTransport(local_address="127.0.0.3")
    with httpx.Client(base_url=base, transport=flooder, timeout=20) as http:
        for n in range(200):
            response = http.get("/status", headers={"Authorization": f"Bearer wrong-{n}"})
            statuses.append(response.status_code)
            if response.status_code == 429:
                retry_after.append(response.headers.get("Retry-After", ""))
        # Throttled: the source's next request is refused before any token is checked.
        assert http.get("/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 429

    def counted() -> int:
        return sum(
            json.loads(e.detail).get("failures", 0) + json.loads(e.detail).get("throttled", 0)
            for e in _entries(dep, "api.auth")
        )

    # Every attempt is counted (the 201st is the right token, refused unchecked).
    wait_for(lambda: counted() == 201, timeout=30)
    entries = _entries(dep, "api.auth")
    assert len(entries) <= 10  # one at once, then one per 3 s interval (the flood takes ~2 s)
    assert {e.outcome for e in entries} == {"failure"}
    assert all("127.0.0.3" not in e.entity + e.detail for e in entries)  # the source is hashed
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
    assert all(value.isdigit() and int(value) > 0 for value in retry_after)
    # Another source with the right token is served.
    other = httpx.Client(base_url=base, transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=20)
    with other:
        assert other.get("/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_a_request_that_fails_inside_is_answered_500_and_audited_without_content(
    api: tuple[Embedded, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    dep, base = api

    def broken(*_args: object, **_kwargs: object) -> dict[str, Any]:
        raise RuntimeError(f"the store broke while reading {MRN}")

    start = _entries(dep)[-1].seq
    monkeypatch.setattr(sidecar.stats.StatusCounts, "__call__", broken)
    with httpx.Client(base_url=base, timeout=20) as http:
        response = http.get("/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 500
    assert response.json()["resourceType"] == "OperationOutcome" and MRN not in response.text
    [entry] = _entries(dep, "api.error", after=start)
    assert (entry.actor, entry.outcome, entry.entity) == ("api:client", "failure", "/status")
    assert json.loads(entry.detail) == {"status": 500, "error_type": "RuntimeError"}
    assert MRN not in caplog.text


def test_numbers_out_of_range_are_answered_400_with_an_operation_outcome(api: tuple[Embedded, str]) -> None:
    _dep, base = api
    auth = {"Authorization": f"Bearer {OTHER_TOKEN}"}
    paths = [
        "/fhir/Observation?patient=Patient/p1&_cursor={n}",
        "/fhir/Observation?patient=Patient/p1&_count={n}",
        "/fhir/Patient/p1/_history/{n}",
        "/audit?since={n}",
        "/audit?limit={n}",
    ]
    with httpx.Client(base_url=base, timeout=20) as http:
        for path in paths:
            for value in (2**63, 2**64, 10**30, -1, "abc", "1e3"):
                response = http.get(path.format(n=value), headers=auth)
                assert response.status_code == 400, (path, value, response.text)
                assert response.json()["resourceType"] == "OperationOutcome"
        # A version is an INTEGER column: 2**31 is out of its range already.
        assert http.get(f"/fhir/Patient/p1/_history/{2**31}", headers=auth).status_code == 400


def test_search_values_and_unknown_ids_reach_the_audit_log_only_as_hashes(api: tuple[Embedded, str]) -> None:
    dep, base = api
    dep.deliver(encoded(ADT_A01))
    start = _entries(dep)[-1].seq
    with dep.db.sessions() as s:
        [patient] = s.execute(select(Resource.resource_id).where(
            Resource.resource_type == "Patient")).scalars().all()  # fmt: skip
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, timeout=20) as http:
        assert (
            http.get("/fhir/Observation", params={"patient": f"Patient/{MRN}"}, headers=auth).status_code
            == 200
        )
        assert http.get("/fhir/Observation", params={"subject": MRN}, headers=auth).status_code == 200
        assert http.get(f"/fhir/Patient/{MRN}", headers=auth).status_code == 404
        assert http.get(f"/fhir/Patient/{MRN}/_history/1", headers=auth).status_code == 404
        assert http.get("/fhir/Observation", params={"patient": patient}, headers=auth).status_code == 200
        auditor = {"Authorization": f"Bearer {OTHER_TOKEN}"}
        assert http.get("/audit", params={"entity": MRN, "action": MRN}, headers=auditor).status_code == 200
    assert all(MRN not in f"{e.entity} {e.detail}" for e in _entries(dep))
    entries = _entries(dep, after=start)
    searches = [e.entity for e in entries if e.action == "fhir.search"]
    assert searches[-1] == f"Observation?patient=Patient/{patient}"  # our own pseudonym stays readable
    assert len(searches) == 3 and searches[0] == searches[1]  # the same value gives the same hash
    hashed = searches[0].rsplit("/", 1)[1]
    assert hashed.startswith("h:")
    # A read of an id we do not hold: the type is ours, the id the client's.
    assert [e.entity for e in entries if e.action in ("fhir.read", "fhir.vread")] == [f"Patient/{hashed}"] * 2


def test_the_log_filter_lets_a_few_lines_through_and_counts_the_rest() -> None:
    """What keeps asyncio's accept errors from filling the disk (the probe: 267,393 lines
    in 25 s), on a clock of its own."""
    now = [0.0]
    limiter = RateLimitFilter(rate_per_s=1.0, burst=5, clock=lambda: now[0])
    seen: list[logging.LogRecord] = []
    logger = logging.getLogger("tests.security.flood")
    logger.propagate = False
    logger.addHandler(_Collect(seen))
    logger.addFilter(limiter)
    try:
        for n in range(1000):
            logger.error("socket.accept() out of system resource\nsocket: <fd=%d>", n)
        assert len(seen) == 5
        now[0] += 1.0
        logger.error("socket.accept() out of system resource\nsocket: <fd=%d>", 1000)
        assert len(seen) == 6 and getattr(seen[-1], "suppressed", None) == 995
        for n in range(10):
            logger.error("socket.accept() out of system resource\nsocket: <fd=%d>", n)
        report = logging.getLogger("tests.security.report")
        report.propagate = False
        told: list[logging.LogRecord] = []
        report.addHandler(_Collect(told))
        assert limiter.report(report) == 10 and getattr(told[0], "lines", None) == 10
        assert limiter.report(report) == 0
    finally:
        logger.removeFilter(limiter)
        logger.handlers.clear()


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)
