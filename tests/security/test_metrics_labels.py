"""Metrics labels stay bounded whatever senders claim to be (issue 17, "Metrics labels
unbounded"): the probe grew /metrics from 5 KB to 8.9 MB with 2,000 rejected messages of
random MSH-3/4, each making a labelled series that was never removed.

Over real sockets; the exposition is read as Prometheus would (``generate_latest``).
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connectors.metrics import OTHER, IntakeMetrics
from connectors.mllp.server import MllpConfig, MllpServer
from tests.test_connectors_server import MemorySink, ServerThread, msa

pytestmark = pytest.mark.timeout(60)


def message(app: str, facility: str, control_id: str) -> bytes:
    return (
        f"MSH|^~\\&|{app}|{facility}|SIDECAR|HOSP|20240101120000||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r"
        "PID|1||12345^^^HOSP^MR||DOE^JANE\r"
    ).encode()


def random_name(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_uppercase + string.digits, k=12))


@contextmanager
def running(config: MllpConfig, metrics: IntakeMetrics) -> Iterator[tuple[ServerThread, MemorySink]]:
    sink = MemorySink()
    harness = ServerThread(MllpServer(config, sink, metrics=metrics))
    try:
        yield harness, sink
    finally:
        harness.close()


def label_values(metrics: IntakeMetrics, label: str) -> set[str]:
    text = generate_latest(metrics.registry).decode()
    return {
        sample.labels[label]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if label in sample.labels
    }


def sample(metrics: IntakeMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_rejected_senders_are_counted_under_one_label() -> None:
    # Only LAB may send; 300 messages claiming random applications and facilities are
    # rejected (AR). The bound is what is tested; the probe sent 2,000.
    rng = random.Random(17)
    metrics = IntakeMetrics()
    config = MllpConfig(port=0, allowed_senders=("LAB",))
    with running(config, metrics) as (srv, sink), srv.client() as client:
        before = len(generate_latest(metrics.registry))
        for i in range(300):
            ack = client.send(message(random_name(rng), random_name(rng), f"R{i}"))
            assert msa(ack)[1] == "AR"
        assert msa(client.send(message("LAB", "LABFAC", "OK1")))[1] == "AA"
        after = len(generate_latest(metrics.registry))

    assert [m.header.control_id for m in sink.committed] == ["OK1"]
    # The admitted sender has its own label; every rejected one is "other".
    assert label_values(metrics, "sender") == {"LAB|LABFAC", OTHER}
    assert sample(metrics, "sidecar_mllp_messages_received_total", sender=OTHER) == 300
    assert sample(metrics, "sidecar_mllp_messages_nacked_total", sender=OTHER, code="AR") == 300
    assert sample(metrics, "sidecar_mllp_messages_acked_total", sender="LAB|LABFAC") == 1
    # The exposition grew by one sender's series, not by 300 senders' (~70 KB before).
    assert after - before < 4_000


def test_admitted_senders_beyond_the_bound_share_one_label() -> None:
    # No allow-list: any sender is admitted, and the first 4 get labels of their own
    # (max_senders=4 here, 64 by default); the bound is what is tested.
    metrics = IntakeMetrics(max_senders=4)
    with running(MllpConfig(port=0), metrics) as (srv, sink), srv.client() as client:
        for i in range(40):
            assert msa(client.send(message(f"APP{i % 20}", "FAC", f"C{i}")))[1] == "AA"

    assert len(sink.committed) == 40
    assert label_values(metrics, "sender") == {"APP0|FAC", "APP1|FAC", "APP2|FAC", "APP3|FAC", OTHER}
    assert sample(metrics, "sidecar_mllp_messages_acked_total", sender="APP0|FAC") == 2
    assert sample(metrics, "sidecar_mllp_messages_acked_total", sender=OTHER) == 32
    assert sample(metrics, "sidecar_mllp_messages_received_total", sender=OTHER) == 32


def test_unreadable_headers_and_refused_connections_use_fixed_labels() -> None:
    # Labels a peer can choose nothing of: "unknown" for a frame without a readable
    # header, a fixed reason for each refusal; never a peer address.
    metrics = IntakeMetrics()
    config = MllpConfig(port=0, max_connections=1)
    with running(config, metrics) as (srv, _sink), srv.client() as client:
        for i in range(20):
            assert msa(client.send(f"garbage {i}".encode()))[1] == "AR"
        with srv.client() as refused, pytest.raises(ConnectionError):
            refused.receive()
    assert label_values(metrics, "sender") == {"unknown"}
    assert label_values(metrics, "reason") == {"total_limit"}
    assert sample(metrics, "sidecar_mllp_connections_refused_total", reason="total_limit") == 1
    text = generate_latest(metrics.registry).decode()
    assert "127.0.0.1" not in text
