"""The production pipeline under load and outages, on the machine's real PostgreSQL and
RabbitMQ: every event delivered at least once, each patient's in message order."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connectors import MllpClient
from sidecar.stats import collect
from tests.deployments import Production, msa, wait_for
from tests.fixtures.messages import ORU_R01, with_control_id

PATIENTS = int(os.environ.get("SIDECAR_TEST_PATIENTS", "50"))
PER_PATIENT = int(os.environ.get("SIDECAR_TEST_PER_PATIENT", "100"))
CONNECTIONS = 4
SODIUM = "2951-2"


def lab_message(patient: int, seq: int) -> bytes:
    """Patient `patient`'s `seq`-th result; the sodium value encodes seq (100 + seq)."""
    text = with_control_id(ORU_R01, f"P{patient:02d}-{seq:03d}")
    text = text.replace("MRN7734021", f"MRN{5000 + patient}").replace(
        "ACC2026-88", f"ACC{patient:02d}{seq:03d}"
    )
    return text.replace("|139|mmol/L|", f"|{100 + seq}|mmol/L|").encode()


def send_all(port: int, patients: int = PATIENTS, per_patient: int = PER_PATIENT) -> None:
    """Each patient always on the same connection, in sequence: arrival order = seq order.
    A negative ACK or a dropped connection means "not stored": resend the same message."""
    errors: list[BaseException] = []

    def connection(c: int) -> None:
        try:
            mine = [p for p in range(patients) if p % CONNECTIONS == c]
            queue = [(p, seq) for seq in range(per_patient) for p in mine]
            client = MllpClient().connect("127.0.0.1", port, timeout=60)
            i = 0
            while i < len(queue):
                try:
                    code = msa(client.send(lab_message(*queue[i])))[1]
                except (ConnectionError, OSError):
                    client.close()
                    client = MllpClient().connect("127.0.0.1", port, timeout=60)
                    continue
                if code == "AA":
                    i += 1
            client.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=connection, args=(c,)) for c in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors


def assert_every_observation_in_order(
    events: list[dict[str, Any]], patients: int = PATIENTS, per_patient: int = PER_PATIENT
) -> None:
    sodium: dict[str, list[int]] = defaultdict(list)
    ids = set()
    for e in events:
        assert e["type"].endswith((".fhir.Observation.created", ".fhir.Observation.updated")), e["type"]
        ids.add(e["id"])
        data = e["data"]
        if data["code"]["coding"][0]["code"] == SODIUM:
            sodium[e["subject"]].append(int(data["valueQuantity"]["value"]) - 100)
    assert len(ids) == patients * per_patient * 3  # 3 OBX per message, each at least once
    assert len(sodium) == patients
    for subject, seqs in sodium.items():
        first_seen = list(dict.fromkeys(seqs))  # at-least-once: drop redeliveries
        assert first_seen == list(range(per_patient)), f"{subject} out of order"


@pytest.fixture
def production(tmp_path: Path, pg_url: str, rabbit_vhost: str):
    dep = Production(
        tmp_path / "data",
        pg_url,
        rabbit_vhost,
        lanes_per_worker=[[0], [1], [2], [3]],  # one process per lane: patients in parallel
        binding="fhir.Observation.*",
        coalesce_s=3.0,  # a hospital's setting is minutes; 0.2 s would summarise every result
    )
    dep.start()
    yield dep
    codes = dep.stop()
    assert codes.get("serve") == 0, f"{codes}\n{dep.logs()}"


@pytest.mark.timeout(900)
def test_5000_results_for_50_patients_arrive_complete_and_in_order(production: Production) -> None:
    send_all(production.port)
    production.settle(timeout=600)
    assert_every_observation_in_order(production.event_bodies())


OUTAGE_PATIENTS, OUTAGE_PER_PATIENT = 20, 30


def _during_stream(production: Production, outage: Callable[[], None]) -> None:
    """Start the feed, cause the outage once a third has been acknowledged, finish the
    feed, and check that everything arrived: processed once, published, in order."""
    total = OUTAGE_PATIENTS * OUTAGE_PER_PATIENT
    sender = threading.Thread(target=send_all, args=(production.port, OUTAGE_PATIENTS, OUTAGE_PER_PATIENT))
    sender.start()
    wait_for(lambda: collect(production.db)["inbox"]["received"] >= total // 3, timeout=300, interval=0.2)
    outage()
    sender.join(600)
    production.settle(timeout=600)
    stats = collect(production.db)
    assert stats["inbox"]["processed"] == total and stats["inbox"]["failed"] == 0
    assert stats["resources"]["Observation"] == total * 3  # nothing processed into duplicates
    assert_every_observation_in_order(production.event_bodies(), OUTAGE_PATIENTS, OUTAGE_PER_PATIENT)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=180)


@pytest.mark.timeout(900)
def test_rabbitmq_stopped_for_30s_mid_stream_loses_nothing(production: Production) -> None:
    def outage() -> None:
        _rabbitmqctl("stop_app")
        try:
            time.sleep(30)
        finally:
            _rabbitmqctl("start_app")
            _rabbitmqctl("await_startup")

    _during_stream(production, outage)


@pytest.mark.timeout(900)
def test_postgresql_restarted_mid_stream_loses_nothing(production: Production) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]

    def outage() -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
            check=True,
            capture_output=True,
            timeout=180,
        )

    _during_stream(production, outage)
