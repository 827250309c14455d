"""Audit export bundles and their offline verifier (issue 21, acceptance 2): `sidecar audit
export --patient P --since T` writes a bundle that `python -m audit.verify_bundle` accepts
untouched, on an interpreter where nothing of the project but the audit package's hashing
can be imported, and rejects with any one byte changed. Checkpoints made as the log grows
travel in the bundle with consistency proofs. The proofs are RFC 9162's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

import audit
from audit.checkpoint import load_or_create_key
from audit.checkpointer import Checkpointer
from audit.merkle import Tree, root, verify_consistency, verify_inclusion
from audit.verify_bundle import BundleError, verify
from core.db import Database
from core.settings import Settings
from core.tables import AuditCheckpoint, AuditEntry, AuditPatient
from tests.deployments import run_sidecar

REPO = Path(__file__).resolve().parents[1]
# What the verifier must run without: the project's other packages and its heavy libraries.
BLOCKED = ("sqlalchemy", "pydantic", "fastapi", "core", "deid", "sidecar", "worker", "mapping", "connectors")


def test_inclusion_and_consistency_proofs_verify_and_catch_a_changed_leaf() -> None:
    for n in range(1, 40):
        leaves = [f"leaf {i}".encode() for i in range(n)]
        tree = Tree(leaves)
        assert tree.root == root(leaves)
        for i in range(n):
            path = tree.inclusion(i)
            assert verify_inclusion(leaves[i], i, n, path, tree.root)
            assert not verify_inclusion(b"another", i, n, path, tree.root)
            if n > 1:
                assert not verify_inclusion(leaves[i], (i + 1) % n, n, path, tree.root)  # moved
        for m in range(1, n + 1):
            proof = tree.consistency(m)
            assert verify_consistency(m, n, root(leaves[:m]), tree.root, proof)
            if m < n:
                rewritten = [*leaves[: m - 1], b"rewritten"]
                assert not verify_consistency(m, n, root(rewritten), tree.root, proof)


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, Database]:
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    db = Database(settings)
    db.migrate()
    checkpointer = Checkpointer(
        db.engine, load_or_create_key(settings.audit_key_file), every=10, interval_s=3600
    )
    for n in range(60):
        with db.transaction() as session:
            audit.append(
                session,
                actor=f"api:client-{n % 3}",
                action="fhir.read",
                entity=f"Observation/{n}",
                patients=["patient-x" if n % 2 else "patient-y"],
                context=audit.Context(purpose="TREAT", source="10.0.0.7"),
            )
        checkpointer.run_once()
    return data, db


sidecar = run_sidecar


def standalone_verifier(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m audit.verify_bundle`, with the project's other packages made unimportable."""
    code = (
        "import sys, runpy\n"
        f"for name in {BLOCKED!r}: sys.modules[name] = None\n"
        f"sys.argv = ['verify_bundle', *{list(args)!r}]\n"
        "runpy.run_module('audit.verify_bundle', run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_log_is_checkpointed_every_n_entries(logged: tuple[Path, Database]) -> None:
    _data, db = logged
    with db.sessions() as s:
        sizes = list(s.execute(select(AuditCheckpoint.size).order_by(AuditCheckpoint.size)).scalars())
    assert sizes == [10, 20, 30, 40, 50, 60]


def test_an_untouched_bundle_verifies_offline_and_one_byte_changed_does_not(
    logged: tuple[Path, Database], tmp_path: Path
) -> None:
    data, _db = logged
    bundle = tmp_path / "patient-x.audit.json"
    made = sidecar(
        "audit",
        "export",
        "--patient",
        "Patient/patient-x",
        "--since",
        "2000-01-01",
        "--out",
        str(bundle),
        "--data-dir",
        str(data),
    )
    assert made.returncode == 0, made.stderr
    key = tmp_path / "audit.pub"
    key.write_text(sidecar("audit", "public-key", "--data-dir", str(data)).stdout)

    accepted = standalone_verifier(str(bundle), "--key", str(key))
    assert accepted.returncode == 0, accepted.stderr
    assert "bundle verified: 31 entries" in accepted.stdout  # 30 reads of X and the export itself
    assert "6 earlier checkpoint(s) consistent" in accepted.stdout

    text = bundle.read_bytes()
    changed = bytearray(text)
    middle = text.index(b'"entity"') + 12
    changed[middle] ^= 0x01
    tampered = tmp_path / "tampered.audit.json"
    tampered.write_bytes(bytes(changed))
    rejected = standalone_verifier(str(tampered), "--key", str(key))
    assert rejected.returncode == 1 and "REJECTED" in rejected.stderr

    pinned = load_or_create_key(Settings(data_dir=data).audit_key_file).public_key()
    step = max(1, len(text) // 400)
    for position in [*range(0, len(text), step), len(text) - 3]:
        for flip in (0x01, 0x20):
            edited = bytearray(text)
            edited[position] ^= flip
            with pytest.raises((BundleError, UnicodeDecodeError)):
                verify(bytes(edited).decode("utf-8"), pinned)


def test_the_export_is_audited_and_names_the_patient(logged: tuple[Path, Database], tmp_path: Path) -> None:
    data, db = logged
    made = sidecar("audit", "export", "--patient", "patient-y", "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    with db.sessions() as s:
        exports = s.execute(select(func.count()).where(AuditEntry.action == "audit.export")).scalar_one()
    assert exports == 1
    assert verify(made.stdout).entries == 31


def test_retention_archives_old_entries_into_a_verified_bundle_and_keeps_the_proofs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = Database(Settings(data_dir=data))
    db.migrate()
    for n in range(60):
        with db.transaction() as session:
            old = datetime(2019, 3, 1, tzinfo=UTC) + timedelta(hours=n)
            audit.append(
                session,
                actor="api:client",
                action="fhir.read",
                entity=f"Observation/{n}",
                patients=["patient-x"],
                now=old if n < 40 else None,
            )
    kept = tmp_path / "before-archiving.checkpoint"
    kept.write_text(sidecar("audit", "checkpoint", "--data-dir", str(data)).stdout)

    archive_file = tmp_path / "archive-2019.bundle"
    done = sidecar(
        "audit", "archive", "--out", str(archive_file), "--before", "2020-01-01", "--data-dir", str(data)
    )
    assert done.returncode == 0, done.stderr
    assert "entries 1-40 archived" in done.stdout

    accepted = standalone_verifier(str(archive_file))
    assert accepted.returncode == 0 and "bundle verified: 40 entries" in accepted.stdout, accepted.stderr
    checked = sidecar("audit", "verify", "--data-dir", str(data), "--checkpoint", str(kept))
    assert checked.returncode == 0, checked.stderr  # the hashes stayed: chain and tree still prove
    with db.sessions() as s:
        emptied = s.execute(select(AuditEntry).where(AuditEntry.seq <= 40)).scalars().all()
        assert {(e.outcome, e.actor, e.entity, e.detail) for e in emptied} == {("archived", "", "", "{}")}
        assert (
            s.execute(select(func.count()).select_from(AuditPatient).where(AuditPatient.seq <= 40)).scalar()
            == 0
        )
        recorded = s.execute(select(AuditEntry).where(AuditEntry.action == "audit.archived")).scalar_one()
        assert recorded.entity == "audit_log/1-40"
    with db.transaction() as session:  # emptying an entry without an archive is not retention
        session.execute(update(AuditEntry).where(AuditEntry.seq == 45).values(outcome="archived"))
    broken = sidecar("audit", "verify", "--data-dir", str(data))
    assert broken.returncode == 1 and "outside any declared archive" in broken.stderr
