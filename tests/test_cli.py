"""The command line as a user runs it: real processes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

from connectors import MllpClient
from core.fhir import validate_resource
from tests.corpus import corpus_files, deliberately_malformed, message_type, split_messages
from tests.deployments import run_sidecar, serve_process
from tests.fixtures.messages import ADT_A01, IDENTIFIERS, ORU_R01, encoded

REPO = Path(__file__).resolve().parents[1]


sidecar = run_sidecar


def _adt_and_oru_files() -> tuple[list[Path], list[Path]]:
    """(well-formed, deliberately malformed) corpus ADT and ORU files."""
    broken = deliberately_malformed()
    good: list[Path] = []
    bad: list[Path] = []
    for path in corpus_files():
        messages = split_messages(path.read_bytes().decode("utf-8", "replace"))
        if messages and message_type(messages[0]) in {"ADT", "ORU"}:
            (bad if path.name in broken else good).append(path)
    return good, bad


def test_convert_every_corpus_adt_and_oru_file(tmp_path: Path) -> None:
    files, _ = _adt_and_oru_files()
    assert len(files) >= 40
    out = tmp_path / "out"
    result = sidecar("convert", "--out", str(out), "--data-dir", str(tmp_path / "d"), *map(str, files))
    assert result.returncode == 0, result.stderr
    bundles = sorted(out.glob("*.json"))
    assert len(bundles) >= len(files)
    patients = 0
    for path in bundles:
        bundle = json.loads(path.read_text())
        validate_resource(bundle)
        assert bundle["type"] == "transaction"
        patients += sum(e["resource"]["resourceType"] == "Patient" for e in bundle.get("entry", []))
    assert patients >= len(files) - 1  # one corpus A17 swaps two bare "PID|n" segments


def test_convert_deid_on_the_corpus_leaves_no_patient_name(tmp_path: Path) -> None:
    files, _ = _adt_and_oru_files()
    result = sidecar("convert", "--deid", "--data-dir", str(tmp_path / "d"), *map(str, files))
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        bundle = json.loads(line)
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert "name" not in resource or resource["resourceType"] != "Patient"
            assert "address" not in resource and "telecom" not in resource


def test_the_malformed_corpus_message_gets_a_clear_error(tmp_path: Path) -> None:
    _, broken = _adt_and_oru_files()
    assert broken
    result = sidecar("convert", "--data-dir", str(tmp_path / "d"), *map(str, broken))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for path in broken:
        line = next(e for e in result.stderr.splitlines() if e.startswith(f"{path}: "))
        assert len(line) > len(f"{path}: ") + 10


def test_convert_deid_to_stdout_and_a_bad_file_fails_alone(tmp_path: Path) -> None:
    good = tmp_path / "oru.hl7"
    good.write_bytes(encoded(ORU_R01))
    bad = tmp_path / "bad.hl7"
    bad.write_bytes(b"this is not an HL7 message\n")
    missing = tmp_path / "missing.hl7"
    result = sidecar(
        "convert", "--deid", "--data-dir", str(tmp_path / "d"), str(good), str(bad), str(missing)
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    bundle = json.loads(lines[0])
    validate_resource(bundle)
    assert not [v for v in IDENTIFIERS if v.lower() in lines[0].lower()]
    errors = result.stderr.splitlines()
    assert any(e.startswith(f"{bad}: ") for e in errors)
    assert any(e.startswith(f"{missing}: ") for e in errors)
    assert "Traceback" not in result.stderr


def test_a_second_serve_on_the_same_data_dir_stops_with_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    serve = [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(data), "--mllp-port", "0"]
    first = subprocess.Popen(serve, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert first.stdout is not None
        json.loads(first.stdout.readline())  # listening, journal taken
        second = subprocess.run(serve, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert "intake journal" in second.stderr and "in use by another process" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0


def test_serve_drains_on_sigterm_and_stats_reports(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, port = serve_process(data)
    try:
        with MllpClient().connect("127.0.0.1", port, timeout=30) as client:
            client.send(encoded(ADT_A01))
            client.send(encoded(ORU_R01))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = proc.stderr.read() if proc.stderr else ""
    assert not [v for v in IDENTIFIERS if v in logs], "identifier in the logs"
    for line in logs.splitlines():
        json.loads(line)  # every log line is JSON

    stats = sidecar("stats", "--json", "--data-dir", str(data))
    assert stats.returncode == 0, stats.stderr
    data_out = json.loads(stats.stdout)
    assert data_out["inbox"] == {
        "received": 2, "processed": 2, "failed": 0, "pending": 0, "duplicates": 0, "repaired": 0,
        "journal": 0,
    }  # fmt: skip
    assert data_out["resources"]["Patient"] == 1
    assert data_out["resources"]["Observation"] == 3
    assert data_out["events"]["pending"] == 0 and data_out["events"]["published"] > 0
    assert data_out["jobs"]["done"] == 1
    verify = sidecar("audit", "verify", "--data-dir", str(data))
    assert verify.returncode == 0 and "verified" in verify.stdout


def test_demo_prints_a_summary_and_a_verified_chain(tmp_path: Path) -> None:
    result = sidecar("demo", "--patients", "6", "--data-dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit chain verified" in result.stdout
    assert "One summary" in result.stdout
    # The synthetic PACS: every CT stored, each study on its patient's HL7 pseudonym.
    words = " ".join(result.stdout.split())  # rich wraps lines at the terminal width
    assert re.search(r"PACS: 5 C-STOREs \(0x0000 5\); 5 ImagingStudy on the same", words)
    assert "5 de-identified .dcm files" in words
    # Only what a person should read (issue 22): no log line, no warning, and the logs' file
    # named once; what the processes logged is there.
    printed = result.stdout + result.stderr
    assert not [line for line in printed.splitlines() if line.lstrip().startswith('{"ts"')]
    assert "warning" not in printed.lower(), printed
    log_file = tmp_path / "demo" / "sidecar.log"
    assert words.count(str(log_file)) == 1
    assert '"logger"' in log_file.read_text(encoding="utf-8")
    sentences = [m.group(1).rstrip() for m in re.finditer(r"│ \d+\. (.*?)│", result.stdout)]
    assert sentences and not [text for text in sentences if "  " in text]  # no stray double space


def test_convert_report_lists_z_segments_and_unexpected_segments(tmp_path: Path) -> None:
    message = tmp_path / "z.hl7"
    message.write_bytes(
        b"MSH|^~\\&|HIS|H|S|H|20260101||ADT^A01|X1|P|2.5.1\r"
        b"PID|1||M1^^^H^MR||Doe^Jane||19800101|F\rZPI|1|custom value\rXYZ|odd\r"
    )
    result = sidecar("convert", "--report", "--data-dir", str(tmp_path / "d"), str(message))
    assert result.returncode == 0, result.stderr
    unmapped = [line for line in result.stderr.splitlines() if line.startswith("unmapped: ")]
    assert any("ZPI" in line for line in unmapped) and any("XYZ" in line for line in unmapped)
    assert not any("custom value" in line or "odd" in line.split(":", 2)[-1] for line in unmapped)


def test_convert_every_corpus_file_of_every_type(tmp_path: Path) -> None:
    # Every message type maps now (the types without a message map through the segment-driven
    # map); only the deliberately malformed file may fail, and it has a test of its own.
    broken = deliberately_malformed()
    files = [p for p in corpus_files() if p.name not in broken]
    assert len(files) >= 100
    out = tmp_path / "out"
    result = sidecar("convert", "--out", str(out), "--data-dir", str(tmp_path / "d"), *map(str, files))
    assert result.returncode == 0, result.stderr
    bundles = sorted(out.glob("*.json"))
    assert len(bundles) >= len(files)
    for path in bundles:
        bundle = json.loads(path.read_text())
        validate_resource(bundle)
        assert bundle["type"] == "transaction"
    deid = sidecar("convert", "--deid", "--data-dir", str(tmp_path / "d2"), *map(str, files))
    assert deid.returncode == 0, deid.stderr
    for line in deid.stdout.splitlines():
        validate_resource(json.loads(line))
