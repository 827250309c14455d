"""Intake settings reach the running sidecar: charset policy, drop folder, metrics, TLS config."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from connectors import MllpClient
from core.errors import ConfigError
from core.settings import Settings
from core.tables import InboxEntry
from sidecar.app import SidecarApp
from sidecar.stats import collect
from tests.deployments import Embedded, msa, wait_for
from tests.fixtures.messages import ADT_A01, encoded, with_control_id

GB_MESSAGE = (
    "MSH|^~\\&|HIS|ZJHOSP|SIDECAR|ZJHOSP|20260301081500+0800||ADT^A01^ADT_A01|GB-0001|P|2.5.1\r"
    "PID|1||Z100200^^^ZJHOSP^MR||欧阳^娜娜||19800101|F|||浙江省杭州市西湖区文三路90号\r"
).encode("gb18030")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_per_sender_default_charset_decodes_unlabelled_gb18030_without_repair(tmp_path: Path) -> None:
    dep = Embedded(tmp_path / "data", charset_by_sender={"HIS": "GB 18030-2000"})
    dep.start()
    try:
        with MllpClient().connect("127.0.0.1", dep.port, timeout=30) as client:
            assert msa(client.send(GB_MESSAGE))[1] == "AA"
        dep.settle()
        with dep.db.sessions() as s:
            row = s.execute(select(InboxEntry)).scalar_one()
        assert (row.charset, row.repaired, row.raw) == ("gb18030", False, GB_MESSAGE)
        assert row.status == "processed"
    finally:
        dep.stop()


def test_a_typo_in_charset_settings_stops_start_up_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="charset"):
        SidecarApp(Settings(data_dir=tmp_path, mllp_port=0, charset_by_sender={"HIS": "GB-18030-typo"}))


def test_tls_needs_both_certificate_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_key_file"):
        SidecarApp(Settings(data_dir=tmp_path, mllp_port=0, tls_cert_file=tmp_path / "cert.pem"))


def test_drop_folder_files_travel_the_whole_chain(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    dep = Embedded(tmp_path / "data", drop_dir=drop, drop_poll_interval_s=0.05, drop_settle_s=0.0)
    dep.start()
    try:
        batch = (
            "FHS|^~\\&|HIS\rBHS|^~\\&|HIS\r"
            + "".join(with_control_id(ADT_A01, f"FILE-{i}") for i in range(3))
            + "BTS|3\rFTS|1\r"
        )
        # Write, then rename: the convention senders follow so a half-written file is never taken.
        partial = drop / "incoming" / "adt.hl7.tmp"
        partial.write_text(batch, encoding="utf-8")
        partial.replace(drop / "incoming" / "adt.hl7")
        wait_for(lambda: (drop / "done" / "adt.hl7").exists(), timeout=30)
        dep.settle()
        stats = collect(dep.db)
        assert stats["inbox"]["received"] == 3 and stats["inbox"]["processed"] == 3
        assert stats["resources"]["Patient"] == 1  # one patient, three messages
    finally:
        dep.stop()


def test_metrics_endpoint_counts_acks_and_latency(tmp_path: Path) -> None:
    port = free_port()
    dep = Embedded(tmp_path / "data", metrics_port=port)
    dep.start()
    try:
        with MllpClient().connect("127.0.0.1", dep.port, timeout=30) as client:
            client.send(encoded(ADT_A01))
            client.send(encoded(ADT_A01))  # a resend
            client.send(b"garbage")
        dep.settle()  # a resend is recognised when the inbox takes it (after the journal)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        dep.stop()
    sender = 'sender="HIS|GENHOSP"'
    assert f"sidecar_mllp_messages_acked_total{{{sender}}} 2.0" in text
    assert f"sidecar_mllp_messages_duplicate_total{{{sender}}} 1.0" in text
    assert 'sidecar_mllp_messages_nacked_total{code="AR",sender="unknown"} 1.0' in text
    assert "sidecar_mllp_ack_latency_seconds_count 3.0" in text
