"""Audit entries reach a real syslog daemon over TLS (issue 21, acceptance 3): rsyslog, from
Debian's packages, started here with a TLS-only listener (RFC 5425) and a certificate of our
own CA. `sidecar serve` (embedded) forwards 10,000 entries; the daemon is stopped for 30 s
half-way while entries keep being written; after it is back every entry has arrived, each
seq at least once, and de-duplicated by seq exactly the log's entries. Each message is RFC
5424 with MSGID IHE+FHIR and a FHIR AuditEvent that fhir.resources accepts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import func, select

import audit
from core.tables import AuditEntry
from tests.deployments import Embedded, wait_for

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
ENTRIES = 10_000
OUTAGE_S = 30.0
_LINE = re.compile(r'^\[sidecar@32473 seq="(\d+)" hash="([0-9a-f]{64})" action="[^"]*"\] (\S+) (.*)$')


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for localhost / 127.0.0.1."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("sidecar test CA"))
        .issuer_name(_name("sidecar test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rsyslog:
    """rsyslogd in the foreground, TLS only, writing each message's SD, MSGID and MSG to a file."""

    def __init__(self, folder: Path, port: int) -> None:
        ca, cert, key = _certificates(folder)
        (folder / "work").mkdir()
        self.out = folder / "received.log"
        self.conf = folder / "rsyslog.conf"
        self.conf.write_text(
            f"""
global(workDirectory="{folder / "work"}" maxMessageSize="256k"
       defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{ca}"
       defaultNetstreamDriverCertFile="{cert}" defaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="audit")
template(name="raw" type="string" string="%STRUCTURED-DATA% %MSGID% %msg%\\n")
ruleset(name="audit") {{ action(type="omfile" file="{self.out}" template="raw") }}
"""
        )
        self.pid_file = folder / "rsyslogd.pid"
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.ca = ca

    def start(self) -> None:
        self.process = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pid_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def listening() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, self.process.stderr
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
        self.process = None

    def received(self) -> list[tuple[int, str, str]]:
        """(seq, MSGID, payload) of every line written so far."""
        if not self.out.exists():
            return []
        found = []
        for line in self.out.read_text("utf-8", "replace").splitlines():
            match = _LINE.match(line)
            assert match is not None, line[:200]
            found.append((int(match.group(1)), match.group(3), match.group(4)))
        return found


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Rsyslog]:
    collector = Rsyslog(tmp_path, _free_port())
    collector.start()
    try:
        yield collector
    finally:
        collector.stop()


def _append(dep: Embedded, count: int, start: int) -> None:
    for first in range(start, start + count, 200):
        with dep.db.transaction() as session:
            for n in range(first, min(first + 200, start + count)):
                audit.append(
                    session,
                    actor=f"api:client-{n % 4}",
                    action="fhir.read",
                    entity=f"Observation/obs-{n}",
                    detail={"status": 200},
                    patients=[f"patient-{n % 50}"],
                    context=audit.Context(purpose="TREAT", source="10.1.2.3"),
                )


def test_ten_thousand_entries_arrive_exactly_once_across_a_30_s_outage(
    daemon: Rsyslog, tmp_path: Path
) -> None:
    dep = Embedded(
        tmp_path / "data",
        audit_syslog_host="localhost",
        audit_syslog_port=daemon.port,
        audit_syslog_ca_file=daemon.ca,
        audit_syslog_confirm_s=1.0,
    )
    dep.start()
    try:
        _append(dep, ENTRIES // 2, 0)
        wait_for(lambda: len(daemon.received()) >= ENTRIES // 4, timeout=120)
        daemon.stop()  # the collector goes away mid-stream
        stopped = time.monotonic()
        _append(dep, ENTRIES // 2, ENTRIES // 2)  # written while nobody listens
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
        daemon.start()
        with dep.db.sessions() as s:
            logged = s.execute(select(func.max(AuditEntry.seq))).scalar_one()
        assert logged >= ENTRIES

        def caught_up() -> bool:
            return {seq for seq, _, _ in daemon.received()} >= set(range(1, logged + 1))

        wait_for(caught_up, timeout=180, interval=0.5)
    finally:
        dep.stop()
    received = daemon.received()
    seqs = [seq for seq, _, _ in received]
    with dep.db.sessions() as s:
        every = set(s.execute(select(AuditEntry.seq)).scalars())
    assert set(seqs) == every  # de-duplicated by seq: exactly the log's entries, none lost
    assert len(every) >= ENTRIES
    print(
        f"{len(every)} entries, {len(seqs)} messages received ({len(seqs) - len(set(seqs))} re-sent copies)"
    )
    msgids = {msgid for _, msgid, _ in received}
    assert msgids == {"IHE+FHIR"}
    for _, _, payload in received[:: max(1, len(received) // 50)]:
        event = json.loads(payload.lstrip("\ufeff"))
        AuditEvent.model_validate(event)
