"""Signed checkpoints of the audit log (issue 21): what the hash chain alone cannot prove.
Whoever can write to the database can cut the tail off and re-point the head, or rewrite an
entry and recompute every hash after it, and `sidecar audit verify` still passes; a
checkpoint an auditor kept from before catches both, naming the checkpoint. The Merkle
hashing is checked against Certificate Transparency's reference roots (RFC 9162 hashing).
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

import audit
from audit.entry_hash import entry_digest
from audit.merkle import root
from core.db import Database
from core.settings import Settings
from core.tables import AuditEntry, AuditHead
from tests.deployments import run_sidecar

REPO = Path(__file__).resolve().parents[1]

# Certificate Transparency's test leaves and the roots of their first n (its merkle tests).
CT_LEAVES = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]
CT_ROOTS = {
    0: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}


sidecar = run_sidecar


def _unwrapped(text: str) -> str:
    """Without the line breaks the console's width put into a long path."""
    return "".join(text.split())


@pytest.mark.parametrize("size", sorted(CT_ROOTS))
def test_the_tree_hash_is_rfc_9162s(size: int) -> None:
    assert root([bytes.fromhex(h) for h in CT_LEAVES[:size]]).hex() == CT_ROOTS[size]


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, Database]:
    data = tmp_path / "data"
    db = Database(Settings(data_dir=data))
    db.migrate()
    for n in range(50):
        with db.transaction() as session:
            audit.append(session, actor=f"api:client-{n % 3}", action="fhir.read", entity=f"Observation/{n}")
    return data, db


def _checkpoint(data: Path, tmp_path: Path) -> Path:
    made = sidecar("audit", "checkpoint", "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    saved = tmp_path / "kept-by-the-auditor.checkpoint"
    saved.write_text(made.stdout, encoding="utf-8")
    assert made.stdout.splitlines()[1] == str(audit.verify(Database(Settings(data_dir=data)).engine).entries)
    return saved


def test_a_log_that_grew_still_extends_a_kept_checkpoint(
    logged: tuple[Path, Database], tmp_path: Path
) -> None:
    data, db = logged
    saved = _checkpoint(data, tmp_path)
    assert stat.S_IMODE((data / "audit-signing.key").stat().st_mode) == 0o600  # outside the database
    with db.transaction() as session:
        audit.append(session, actor="api:client-9", action="fhir.search", entity="Observation?population")
    checked = sidecar("audit", "verify", "--data-dir", str(data), "--checkpoint", str(saved))
    assert checked.returncode == 0 and "extends checkpoint" in checked.stdout, checked.stderr


def test_a_cut_tail_with_its_head_re_pointed_is_caught_by_the_checkpoint(
    logged: tuple[Path, Database], tmp_path: Path
) -> None:
    data, db = logged
    saved = _checkpoint(data, tmp_path)
    with db.transaction() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.seq > 40))
        last = session.execute(select(AuditEntry).where(AuditEntry.seq == 40)).scalar_one()
        session.execute(update(AuditHead).values(seq=40, hash=last.hash))
    assert sidecar("audit", "verify", "--data-dir", str(data)).returncode == 0  # the chain alone: fooled
    checked = sidecar("audit", "verify", "--data-dir", str(data), "--checkpoint", str(saved))
    assert checked.returncode == 1
    assert str(saved) in _unwrapped(checked.stderr) and "entries removed" in checked.stderr


def test_an_entry_rewritten_with_every_hash_after_it_is_caught_by_the_checkpoint(
    logged: tuple[Path, Database], tmp_path: Path
) -> None:
    data, db = logged
    saved = _checkpoint(data, tmp_path)
    with db.transaction() as session:
        rows = session.execute(
            select(AuditEntry).where(AuditEntry.seq >= 20).order_by(AuditEntry.seq)
        ).scalars()
        prev = session.execute(select(AuditEntry.hash).where(AuditEntry.seq == 19)).scalar_one()
        for entry in list(rows):
            if entry.seq == 20:
                entry.entity = "Observation/someone-else"  # who touched what, rewritten
            entry.prev_hash = prev
            entry.hash = entry_digest(
                entry.seq,
                entry.at,
                entry.actor,
                entry.action,
                entry.outcome,
                entry.entity,
                entry.detail,
                prev,
            )
            prev = entry.hash
        session.execute(update(AuditHead).values(hash=prev))
    assert sidecar("audit", "verify", "--data-dir", str(data)).returncode == 0  # the chain alone: fooled
    checked = sidecar("audit", "verify", "--data-dir", str(data), "--checkpoint", str(saved))
    assert (
        checked.returncode == 1 and str(saved) in _unwrapped(checked.stderr) and "rewritten" in checked.stderr
    )


def test_a_checkpoint_edited_after_signing_is_refused(logged: tuple[Path, Database], tmp_path: Path) -> None:
    data, _db = logged
    saved = _checkpoint(data, tmp_path)
    lines = saved.read_text(encoding="utf-8").split("\n")
    lines[1] = "40"  # an auditor's copy "shortened" to fit a cut log
    saved.write_text("\n".join(lines), encoding="utf-8")
    checked = sidecar("audit", "verify", "--data-dir", str(data), "--checkpoint", str(saved))
    assert checked.returncode == 1 and "signature does not verify" in checked.stderr
