"""Issue 17, drop folder: size caps, the symlink race, half-written files, names in metadata.

Each test drives the real connector on a real folder: the end-to-end ones through an
embedded ``sidecar serve`` (drop folder, pipeline and API on), the race ones through the
connector's own scan with a hook between the scan and the open, so the race is won by
the attacker every time instead of by luck.
"""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from connectors import files
from connectors.files import DropFolder, DropFolderConfig, FileStatus
from core.db import Database
from core.tables import InboxEntry, QuarantineEntry
from tests.deployments import Embedded, wait_for
from tests.fixtures.logs import Records, captured
from tests.fixtures.messages import ORU_R01, with_control_id

pytestmark = pytest.mark.timeout(120)

KiB = 1024
SECRET = b"-----sidecar pseudonym secret-----\n"


def oru(control_id: str) -> bytes:
    return with_control_id(ORU_R01, control_id).encode()


def huge_oru(control_id: str, size: int, tail: bytes) -> bytes:
    """One ORU whose OBX-5 carries ``size`` bytes (an embedded PDF, say), ending in ``tail``."""
    value = b"A" * (size - len(tail)) + tail
    return oru(control_id) + b"OBX|4|ED|PDF^Report||^AP^PDF^Base64^" + value + b"||||||F\r"


@pytest.fixture
def records() -> Iterator[Records]:
    with captured("sidecar") as handler:
        yield handler


def quarantined(db: Database) -> list[QuarantineEntry]:
    with db.sessions() as session:
        return list(session.execute(select(QuarantineEntry).order_by(QuarantineEntry.id)).scalars())


def stored(db: Database) -> list[InboxEntry]:
    with db.sessions() as session:
        return list(session.execute(select(InboxEntry).order_by(InboxEntry.id)).scalars())


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def swap_after_scan(monkeypatch: pytest.MonkeyPatch, swap: Any) -> None:
    """Run ``swap`` once, after the scan has looked at the files and before they are opened."""
    scan = DropFolder._settled_files
    done: list[bool] = []

    def hooked(self: DropFolder, *args: Any, **kwargs: Any) -> Any:
        ready = scan(self, *args, **kwargs)
        if ready and not done:
            done.append(True)
            swap()
        return ready

    monkeypatch.setattr(DropFolder, "_settled_files", hooked)


# -- size caps -----------------------------------------------------------------------------


def test_a_message_over_the_cap_is_quarantined_and_the_next_file_is_taken(tmp_path: Path) -> None:
    # The cap is what is tested: 64 KiB here with a 1 MiB message stands for the probe's
    # 100 MB message against the 1 MiB default.
    drop = tmp_path / "drop"
    dep = Embedded(
        tmp_path / "data",
        drop_dir=drop,
        drop_poll_interval_s=0.05,
        drop_settle_s=0.0,
        drop_max_message_bytes=64 * KiB,
    )
    dep.start()
    try:
        tail = b"END-OF-THE-HUGE-MESSAGE"
        big = huge_oru("BIG-1", 1024 * KiB, tail)
        (drop / "incoming" / "a-big.hl7").write_bytes(oru("SMALL-0") + big)
        wait_for(lambda: names(drop / "failed") == ["a-big.hl7", "a-big.hl7.reason.txt"], timeout=30)
        (drop / "incoming" / "b-next.hl7").write_bytes(oru("NEXT-1"))
        wait_for(lambda: names(drop / "done") == ["b-next.hl7"], timeout=30)
        dep.settle()

        [row] = quarantined(dep.db)
        assert row.code == "oversized"
        assert "over the limit of 65536 bytes" in row.reason
        # A bounded prefix (the header, for the operator), never the whole message.
        assert row.raw.startswith(b"MSH|^~\\&|LIS|GENHOSP|") and len(row.raw) <= 64 * KiB
        assert tail not in row.raw
        assert [e.control_id for e in stored(dep.db)] == ["SMALL-0", "NEXT-1"]
        assert all(e.status == "processed" for e in stored(dep.db))
        reason = (drop / "failed" / "a-big.hl7.reason.txt").read_text("utf-8")
        assert "message 2:" in reason and "(oversized)" in reason
    finally:
        dep.stop()


def test_a_huge_single_message_is_never_held_whole(tmp_path: Path, inbox) -> None:
    # 8 MiB against a 64 KiB cap: the file is read through in chunks, never as a whole.
    db, sink = inbox
    config = DropFolderConfig(root=tmp_path / "drop", settle_s=0.0, max_message_bytes=64 * KiB)
    folder = DropFolder(config, sink)
    config.incoming.mkdir(parents=True)
    tail = b"THE-LAST-BYTES"
    (config.incoming / "huge.hl7").write_bytes(huge_oru("HUGE-1", 8 * 1024 * KiB, tail))

    tracemalloc.start()
    try:
        outcomes = folder.scan_once() + folder.scan_once()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    [outcome] = outcomes
    assert (outcome.status, outcome.quarantined, outcome.committed) == (FileStatus.FAILED, 1, 0)
    assert peak < 4 * 1024 * KiB, f"peak {peak} bytes: the message was held whole"
    [row] = quarantined(db)
    assert row.code == "oversized" and tail not in row.raw and len(row.raw) <= 64 * KiB
    assert stored(db) == []


def test_the_file_cap_is_checked_on_the_opened_file(tmp_path: Path, inbox, monkeypatch) -> None:
    # The scan saw a small file; what is opened is big: the cap applies to what is read.
    db, sink = inbox
    config = DropFolderConfig(root=tmp_path / "drop", settle_s=0.0, max_file_bytes=64 * KiB)
    folder = DropFolder(config, sink)
    config.incoming.mkdir(parents=True)
    path = config.incoming / "grows.hl7"
    path.write_bytes(oru("G-1"))

    def grow() -> None:
        with path.open("ab") as f:
            f.write(b"NTE|1||" + b"x" * (128 * KiB) + b"\r")

    swap_after_scan(monkeypatch, grow)
    outcomes = [o for _ in range(3) for o in folder.scan_once()]

    [outcome] = outcomes
    assert outcome.status is FileStatus.FAILED and "over the limit" in outcome.reason
    [row] = quarantined(db)
    assert row.code == "oversized" and row.raw == b""
    assert stored(db) == []


# -- the symlink race ----------------------------------------------------------------------


def bait(tmp_path: Path, config: DropFolderConfig) -> tuple[Path, Path]:
    """A secret outside the folder and a dropped file with its size and mtime."""
    secret = tmp_path / "data" / "secret.key"
    secret.parent.mkdir(exist_ok=True)
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    config.incoming.mkdir(parents=True)
    path = config.incoming / "bait.hl7"
    path.write_bytes(b"x" * len(SECRET))
    st = secret.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return secret, path


def assert_secret_never_read(db: Database, tmp_path: Path) -> None:
    assert all(SECRET not in row.raw for row in quarantined(db))
    assert all(SECRET not in e.raw for e in stored(db))
    for reason in (tmp_path / "drop" / "failed").glob("*.reason.txt"):
        assert SECRET.decode() not in reason.read_text("utf-8")


def test_a_symlink_swapped_in_after_the_scan_is_not_followed(tmp_path: Path, inbox, monkeypatch) -> None:
    db, sink = inbox
    config = DropFolderConfig(root=tmp_path / "drop", settle_s=0.0)
    folder = DropFolder(config, sink)
    secret, path = bait(tmp_path, config)

    def swap() -> None:
        path.unlink()
        path.symlink_to(secret)

    swap_after_scan(monkeypatch, swap)
    outcomes = [o for _ in range(3) for o in folder.scan_once()]

    assert_secret_never_read(db, tmp_path)
    [outcome] = outcomes
    assert outcome.status is FileStatus.FAILED and "symbolic link" in outcome.reason
    [row] = quarantined(db)
    assert (row.code, row.raw) == ("not-regular", b"") and "symbolic link" in row.reason
    # The link itself is moved aside (a rename never follows it); the secret is untouched.
    assert (tmp_path / "drop" / "failed" / "bait.hl7").is_symlink()
    assert secret.read_bytes() == SECRET


def test_a_fifo_swapped_in_after_the_scan_neither_hangs_nor_is_read(
    tmp_path: Path, inbox, monkeypatch
) -> None:
    db, sink = inbox
    config = DropFolderConfig(root=tmp_path / "drop", settle_s=0.0)
    folder = DropFolder(config, sink)
    _, path = bait(tmp_path, config)

    def swap() -> None:
        path.unlink()
        os.mkfifo(path)

    swap_after_scan(monkeypatch, swap)
    outcomes = [o for _ in range(3) for o in folder.scan_once()]

    [outcome] = outcomes
    assert outcome.status is FileStatus.FAILED and "not a regular file" in outcome.reason
    [row] = quarantined(db)
    assert (row.code, row.raw) == ("not-regular", b"")


def test_a_hard_link_to_a_secret_is_refused(tmp_path: Path, inbox) -> None:
    db, sink = inbox
    config = DropFolderConfig(root=tmp_path / "drop", settle_s=0.0)
    folder = DropFolder(config, sink)
    secret, path = bait(tmp_path, config)
    path.unlink()
    os.link(secret, path)

    outcomes = [o for _ in range(3) for o in folder.scan_once()]

    assert_secret_never_read(db, tmp_path)
    [outcome] = outcomes
    assert outcome.status is FileStatus.FAILED and "hard links" in outcome.reason
    assert secret.read_bytes() == SECRET


def test_a_file_replaced_after_the_scan_is_not_read_until_it_settles(
    tmp_path: Path, inbox, monkeypatch
) -> None:
    # Not the file that was scanned (another inode): it starts settling over again.
    db, sink = inbox
    config = DropFolderConfig(root=tmp_path / "drop", settle_s=0.0)
    folder = DropFolder(config, sink)
    config.incoming.mkdir(parents=True)
    path = config.incoming / "swap.hl7"
    path.write_bytes(oru("FIRST"))

    def replace() -> None:
        other = config.incoming / "other.tmp"
        other.write_bytes(oru("SECOND"))
        os.replace(other, path)

    swap_after_scan(monkeypatch, replace)
    assert folder.scan_once() == []  # first sight
    assert folder.scan_once() == []  # settled, then swapped before the open: not read
    assert stored(db) == []
    [outcome] = folder.scan_once() + folder.scan_once()
    assert outcome.status is FileStatus.DONE
    assert [e.control_id for e in stored(db)] == ["SECOND"]


# -- half-written files --------------------------------------------------------------------


def test_a_half_written_file_is_taken_only_once_complete(tmp_path: Path, inbox) -> None:
    db, sink = inbox
    config = DropFolderConfig(root=tmp_path / "drop", settle_s=0.0)
    folder = DropFolder(config, sink)
    config.incoming.mkdir(parents=True)
    data = oru("HALF-1")
    cut = data.index(b"OBX|2|") + 20  # inside the second OBX: the writer stalled there
    path = config.incoming / "lab.hl7"
    path.write_bytes(data[:cut])

    for _ in range(3):
        assert folder.scan_once() == []
    with path.open("ab") as f:
        f.write(data[cut:])
    outcomes = [o for _ in range(3) for o in folder.scan_once()]

    [outcome] = outcomes
    assert (outcome.status, outcome.committed) == (FileStatus.DONE, 1)
    [entry] = stored(db)
    assert entry.raw == data
    assert entry.raw.count(b"\rOBX|") == 3


def test_a_file_paused_at_a_segment_boundary_is_not_taken_at_first_sight(tmp_path: Path, inbox) -> None:
    # Ends at a segment boundary but the writer is not done: two scans must agree first.
    db, sink = inbox
    config = DropFolderConfig(root=tmp_path / "drop", settle_s=0.0)
    folder = DropFolder(config, sink)
    config.incoming.mkdir(parents=True)
    data = oru("PAUSE-1")
    cut = data.index(b"OBX|2|")
    path = config.incoming / "lab.hl7"
    path.write_bytes(data[:cut])

    assert folder.scan_once() == []
    with path.open("ab") as f:
        f.write(data[cut:])
    outcomes = [o for _ in range(3) for o in folder.scan_once()]

    [outcome] = outcomes
    assert outcome.status is FileStatus.DONE
    [entry] = stored(db)
    assert entry.raw == data


def test_a_file_that_never_completes_goes_to_failed_with_the_reason(
    tmp_path: Path, inbox, monkeypatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(files, "time", clock)
    db, sink = inbox
    config = DropFolderConfig(root=tmp_path / "drop", settle_s=0.5, incomplete_after_s=60.0)
    folder = DropFolder(config, sink)
    config.incoming.mkdir(parents=True)
    data = oru("STUCK-1")
    (config.incoming / "stuck.hl7").write_bytes(data[:-10])

    for _ in range(5):
        assert folder.scan_once() == []
        clock.now += 10.0
    clock.now += 20.0
    [outcome] = folder.scan_once()

    assert outcome.status is FileStatus.FAILED and "segment boundary" in outcome.reason
    [row] = quarantined(db)
    assert (row.code, row.raw) == ("incomplete", b"")
    assert stored(db) == []


def test_renamed_only_mode_takes_a_renamed_file_at_first_sight(tmp_path: Path, inbox) -> None:
    db, sink = inbox
    config = DropFolderConfig(root=tmp_path / "drop", settle_s=5.0, renamed_only=True)
    folder = DropFolder(config, sink)
    config.incoming.mkdir(parents=True)
    for name in ("lab.hl7.part", "lab.hl7.tmp", "lab.hl7~", ".lab.hl7"):
        (config.incoming / name).write_bytes(oru("R-1")[:50])
    assert folder.scan_once() == []
    (config.incoming / "whole.part").write_bytes(oru("R-1"))
    os.replace(config.incoming / "whole.part", config.incoming / "lab.hl7")

    [outcome] = folder.scan_once()

    assert outcome.status is FileStatus.DONE
    assert [e.control_id for e in stored(db)] == ["R-1"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


# -- identifiers in metadata ---------------------------------------------------------------


def test_a_file_named_after_a_patient_reaches_no_log_line_and_no_audit_entry(
    tmp_path: Path, records: Records
) -> None:
    name = "SMITHERS_WAYLON_MRN4455661_19550317.hl7"
    parts = ["SMITHERS", "WAYLON", "4455661", "19550317"]
    drop = tmp_path / "drop"
    tokens = {"auditor": "t0k3n-of-the-auditor"}
    dep = Embedded(
        tmp_path / "data",
        drop_dir=drop,
        drop_poll_interval_s=0.05,
        drop_settle_s=0.0,
        api_port=0,
        api_tokens=tokens,
        api_auditors=["auditor"],
    )
    dep.start()
    try:
        # A good message (messages.received) and a bad one (message.quarantined).
        (drop / "incoming" / name).write_bytes(oru("NAMED-1") + b"MSH|^~\\&|too|few\r")
        wait_for(lambda: (drop / "failed" / name).exists(), timeout=30)
        dep.settle()
        assert dep.app is not None and dep.app.api is not None
        with httpx.Client(base_url=f"http://127.0.0.1:{dep.app.api.port}", timeout=30) as http:
            answer = http.get(
                "/audit", params={"limit": 1000}, headers={"Authorization": f"Bearer {tokens['auditor']}"}
            )
        assert answer.status_code == 200
        entries = answer.json()["entries"]
        actions = {e["action"] for e in entries}
        assert {"messages.received", "message.quarantined"} <= actions
        served = json.dumps(entries)
        logged = records.text()
        assert any("files." in line for line in records.lines())  # the connector did log
        for part in parts:
            assert part not in served, f"{part} served by /audit"
            assert part not in logged, f"{part} in a log line"
        # The identified zone may keep the name's stand-in; the folder keeps the file.
        [row] = quarantined(dep.db)
        assert name not in row.peer
        reason = (drop / "failed" / (name + ".reason.txt")).read_text("utf-8")
        assert row.peer.split("#")[0] in reason  # the operator can match row and file
    finally:
        dep.stop()
