"""Issue 17, files and operators: nothing in the data directory is open to another local
account, and `sidecar reid` names the account that really runs it.

Every command runs as a real process under umask 022 (a typical login shell's), so the
modes seen are the ones the sidecar chose, not the test runner's.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from connectors import MllpClient
from core.tables import AuditEntry, Resource
from tests.deployments import Embedded, msa, run_sidecar, serve_process
from tests.fixtures.messages import ADT_A01, ORU_R01, encoded

REPO = Path(__file__).resolve().parents[2]
LOGIN_UMASK = 0o022
REAL_ACCOUNT = pwd.getpwuid(os.getuid()).pw_name


def _sidecar(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_sidecar(*args, env=env, umask=LOGIN_UMASK)


def _open_to_others(root: Path) -> list[str]:
    """What `find ROOT -perm /077` prints: every entry, the root included, with a group or
    other permission bit (lstat: a symlink is reported as itself, never followed)."""
    found = _mode_if_open(root, root)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found += _mode_if_open(root, Path(folder) / name)
    return found


def _mode_if_open(root: Path, path: Path) -> list[str]:
    mode = stat.S_IMODE(path.lstat().st_mode)
    return [f"{path.relative_to(root)} {mode:04o}"] if mode & 0o077 else []


def test_demo_leaves_nothing_in_its_data_dir_open_to_other_users(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    result = _sidecar("demo", "--patients", "2", "--data-dir", str(data))
    assert result.returncode == 0, result.stdout + result.stderr
    # The demo wrote its database, journal, secret and de-identified DICOM objects.
    assert (data / "sidecar.db").exists() and (data / "intake-journal.db").exists()
    assert list((data / "deid-dicom").rglob("*.dcm"))
    assert _open_to_others(data) == []


def test_serve_keeps_its_files_private_while_taking_messages_and_after(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, port = serve_process(data, stderr=subprocess.DEVNULL, umask=LOGIN_UMASK)
    try:
        with MllpClient().connect("127.0.0.1", port, timeout=30) as client:
            for message in (ADT_A01, ORU_R01):
                assert msa(client.send(encoded(message)))[1] == "AA"
        # Running: the databases' -wal and -shm files exist now, beside the journal's lock.
        assert (data / "intake-journal.db-wal").exists()
        assert _open_to_others(data) == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _open_to_others(data) == []


def test_a_data_dir_left_open_by_an_older_version_is_tightened_with_a_warning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _sidecar("stats", "--json", "--data-dir", str(data))
    assert first.returncode == 0, first.stderr
    # What a version without the check left behind (umask 022), and a drop folder kept
    # under the data directory whose file is named after a patient.
    failed = data / "drop" / "failed"
    failed.mkdir(parents=True)
    (failed / "DOE_JOHN_MRN7734021.hl7").write_bytes(b"MSH|^~\\&|\r")
    for folder, _dirs, files in os.walk(data):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder) / name, 0o644)
    assert "sidecar.db 0644" in _open_to_others(data)

    again = _sidecar("stats", "--json", "--data-dir", str(data))
    assert again.returncode == 0, again.stderr
    assert _open_to_others(data) == []
    warnings = [json.loads(line) for line in again.stderr.splitlines()]
    named = {w.get("path") for w in warnings if w["level"] == "warning"}
    # Each top-level entry is named relative to the data directory; what lies deeper is
    # counted, since a name down there may be a patient's (a drop file's).
    assert {".", "sidecar.db", "drop"} <= named
    assert str(data) not in again.stderr
    assert "DOE_JOHN" not in again.stderr and "7734021" not in again.stderr


def test_a_secret_others_could_read_is_refused_not_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _sidecar("stats", "--json", "--data-dir", str(data))
    assert first.returncode == 0, first.stderr
    secret = data / "secret.key"
    secret.write_text("ab" * 32 + "\n")
    secret.chmod(0o644)
    # A key that may have been copied makes pseudonyms reversible: no chmod undoes that, so
    # every command stops (not only those that read the key), and the mode stays as found.
    refused = _sidecar("stats", "--json", "--data-dir", str(data))
    assert refused.returncode == 2
    said = " ".join(refused.stderr.split())  # rich wraps lines at the terminal width
    assert "secret secret.key" in said and "accessible to other users" in said
    assert "Traceback" not in refused.stderr
    assert stat.S_IMODE(secret.stat().st_mode) == 0o644


# --- sidecar reid: the operator is the process's real account -------------------------


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A data directory holding one admitted patient; returns it and the Patient id (shared:
    each test reads only the audit entry its own request appended)."""
    data_dir = tmp_path_factory.mktemp("reid") / "data"
    dep = Embedded(data_dir)
    dep.start()
    try:
        dep.deliver(encoded(ADT_A01))
        with dep.db.sessions() as s:
            (patient_id,) = s.execute(
                select(Resource.resource_id).where(Resource.resource_type == "Patient")
            ).scalars()
    finally:
        dep.stop()
    return data_dir, patient_id


def _reid_as_alice(data_dir: Path, patient_id: str, operators: list[str]) -> subprocess.CompletedProcess[str]:
    """`sidecar reid` with every environment variable that names a user saying "alice"."""
    alice = {name: "alice" for name in ("LOGNAME", "USER", "LNAME", "USERNAME")}
    return _sidecar(
        "reid",
        f"Patient/{patient_id}",
        "--reason",
        "ticket 4711",
        "--data-dir",
        str(data_dir),
        env={**alice, "SIDECAR_REID_OPERATORS": json.dumps(operators)},
    )


def _last_audit(data_dir: Path) -> AuditEntry:
    from core.db import Database
    from core.settings import Settings

    db = Database(Settings(data_dir=data_dir))
    try:
        with db.sessions() as s:
            return s.execute(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).scalar_one()
    finally:
        db.dispose()


def test_reid_audits_the_real_account_whatever_the_environment_says(patient: tuple[Path, str]) -> None:
    assert REAL_ACCOUNT != "alice"
    data_dir, patient_id = patient
    done = _reid_as_alice(data_dir, patient_id, operators=[REAL_ACCOUNT])
    assert done.returncode == 0, done.stderr
    entry = _last_audit(data_dir)
    assert (entry.action, entry.actor) == ("patient.reidentified", f"operator:{REAL_ACCOUNT}")


def test_reid_refuses_an_operator_name_borrowed_from_the_environment(patient: tuple[Path, str]) -> None:
    data_dir, patient_id = patient
    done = _reid_as_alice(data_dir, patient_id, operators=["alice"])
    assert done.returncode == 1
    assert "MRN7734021" not in done.stdout + done.stderr
    assert "operator not allowed" in done.stderr
    entry = _last_audit(data_dir)
    assert (entry.action, entry.actor) == ("patient.reid_refused", f"operator:{REAL_ACCOUNT}")
