"""Re-identification: the pseudonym's way back exists only through `sidecar reid`, only for
listed operators, and every request (refused ones too) is in the audit chain."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from core.tables import AuditEntry, Resource
from tests.deployments import Embedded
from tests.fixtures.messages import ADT_A01, encoded

# `sidecar reid` names the account it runs as (real uid), not LOGNAME/USER.
ME = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def patient(tmp_path: Path) -> tuple[Path, str]:
    """A data directory holding one admitted patient; returns it and the Patient id."""
    dep = Embedded(tmp_path / "data")
    dep.start()
    try:
        dep.deliver(encoded(ADT_A01))
        with dep.db.sessions() as s:
            ids = s.execute(select(Resource.resource_id).where(Resource.resource_type == "Patient")).scalars()
            (patient_id,) = list(ids)
    finally:
        dep.stop()
    return tmp_path / "data", patient_id


def _reid(data_dir: Path, *args: str, operators: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SIDECAR_DATA_DIR": str(data_dir), "SIDECAR_REID_OPERATORS": json.dumps(operators)}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "reid", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _audit(data_dir: Path) -> list[AuditEntry]:
    from core.db import Database
    from core.settings import Settings

    db = Database(Settings(data_dir=data_dir))
    try:
        with db.sessions() as s:
            return list(s.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars())
    finally:
        db.dispose()


def test_an_operator_gets_the_identifier_back_and_the_request_is_audited(patient: tuple[Path, str]) -> None:
    data_dir, patient_id = patient
    done = _reid(
        data_dir,
        f"Patient/{patient_id}",
        "--reason",
        "ticket 4711: lab callback",
        operators=[ME],
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["authority"], answer["identifier"]) == ("GENHOSP", "MRN7734021")
    entry = _audit(data_dir)[-1]
    assert (entry.action, entry.outcome, entry.entity) == (
        "patient.reidentified",
        "success",
        f"Patient/{patient_id}",
    )
    assert json.loads(entry.detail) == {"reason": "ticket 4711: lab callback", "patients": [patient_id]}
    assert "MRN7734021" not in entry.detail  # the audit says who asked and why, not the answer
    assert entry.seq == answer["audit_seq"]


@pytest.mark.parametrize(
    ("operators", "reason", "why"),
    [([], "curious", "operator not allowed"), (["__current__"], "  ", "a reason is required")],
)
def test_a_request_outside_the_rules_is_refused_and_audited(
    patient: tuple[Path, str], operators: list[str], reason: str, why: str
) -> None:
    data_dir, patient_id = patient
    allowed = [ME if o == "__current__" else o for o in operators]
    done = _reid(data_dir, patient_id, "--reason", reason, operators=allowed)
    assert done.returncode == 1
    assert "MRN7734021" not in done.stdout + done.stderr
    assert why in done.stderr
    entry = _audit(data_dir)[-1]
    assert (entry.action, entry.outcome) == ("patient.reid_refused", "failure")
    assert json.loads(entry.detail)["refused"] == why


def test_an_unknown_pseudonym_is_refused(patient: tuple[Path, str]) -> None:
    data_dir, _ = patient
    done = _reid(data_dir, "Patient/0000000000000000", "--reason", "check", operators=[ME])
    assert done.returncode == 1
    assert "unknown pseudonym" in done.stderr
    assert _audit(data_dir)[-1].action == "patient.reid_refused"


def test_an_account_without_a_passwd_entry_is_named_by_its_uid() -> None:
    from sidecar.reid import account_name

    unknown = next(uid for uid in range(2**31 - 2, 2**31 - 100, -1) if not _has_passwd_entry(uid))
    assert account_name(unknown) == f"uid:{unknown}"
    assert account_name(os.getuid()) == ME


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


OTHER = next(entry for entry in pwd.getpwall() if entry.pw_uid != os.getuid())


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (str(OTHER.pw_uid), OTHER.pw_name),  # who typed `sudo -u sidecar sidecar reid`
        (str(os.getuid()), None),  # logged in as the account it runs as: nothing to add
        ("4294967295", None),  # no login session (a service, a container)
        ("not a uid", None),
        (None, None),  # no such file (not Linux, no audit support)
    ],
)
def test_the_login_account_comes_from_the_kernels_login_uid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, expected: str | None
) -> None:
    import sidecar.reid

    loginuid = tmp_path / "loginuid"
    if content is not None:
        loginuid.write_text(content + "\n")
    monkeypatch.setattr(sidecar.reid, "_LOGIN_UID_FILE", loginuid)
    assert sidecar.reid.login_account() == expected


def test_the_login_account_is_recorded_beside_the_operator(patient: tuple[Path, str]) -> None:
    from core.db import Database
    from core.settings import Settings
    from sidecar.reid import reidentify

    data_dir, patient_id = patient
    db = Database(Settings(data_dir=data_dir))
    try:
        found = reidentify(
            db, patient_id, operator="sidecar", reason="ticket 4712", operators=["sidecar"], login="alice"
        )
    finally:
        db.dispose()
    entry = _audit(data_dir)[-1]
    assert (entry.seq, entry.actor) == (found.audit_seq, "operator:sidecar")
    assert json.loads(entry.detail) == {"reason": "ticket 4712", "login": "alice", "patients": [patient_id]}
