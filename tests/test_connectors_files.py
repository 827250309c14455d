"""The drop-folder connector on real folders, against an in-memory sink and the real inbox.

Synchronisation is by return values of ``scan_once`` and a bounded polling loop for the
background thread; settling is driven by a fake clock, never by sleeping.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from connectors import files
from connectors.base import InboundMessage, Receipt, Rejected
from connectors.files import REASON_SUFFIX, DropFolder, DropFolderConfig, FileOutcome, FileStatus
from connectors.hl7.batch import split_messages
from connectors.inbox import DatabaseInbox
from core.db import Database
from core.errors import IngestError
from core.settings import Settings
from core.tables import InboxEntry, QuarantineEntry
from tests.fixtures.logs import Records, captured

pytestmark = pytest.mark.timeout(120)

PATIENT = "DOE^JANE"
BOM = b"\xef\xbb\xbf"


def adt(control_id: str, *, sender: str = "ADT1") -> bytes:
    return (
        f"MSH|^~\\&|{sender}|HOSP|SIDECAR|HOSP|20240101120000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r"
        f"EVN|A01|20240101120000\r"
        f"PID|1||{control_id}^^^HOSP^MR||{PATIENT}||19700101|F\r"
        f"PV1|1|I|WARD^101^1\r"
    ).encode()


def as_file(
    messages: Sequence[bytes], *, eol: bytes = b"\r", batch: bool = False, bom: bool = False
) -> bytes:
    lines = [segment for message in messages for segment in message.split(b"\r") if segment]
    if batch:
        lines = [
            b"FHS|^~\\&|ADT1|HOSP|SIDECAR|HOSP|20240101120000",
            b"BHS|^~\\&|ADT1|HOSP|SIDECAR|HOSP|20240101120000",
            *lines,
            f"BTS|{len(messages)}".encode(),
            b"FTS|1",
        ]
    return (BOM if bom else b"") + eol.join(lines) + eol


class MemorySink:
    def __init__(self) -> None:
        self.committed: list[InboundMessage] = []
        self.rejected: list[Rejected] = []
        self.batches = 0
        self.fail_commit = False
        self.fail_quarantine = False
        self.batch_limit: int | None = None  # commit_many calls that succeed before failing

    def commit_many(self, messages: Sequence[InboundMessage]) -> list[Receipt]:
        if self.fail_commit or self.batches == self.batch_limit:
            raise RuntimeError(f"database down; parameters: {[m.raw for m in messages]!r}")
        self.batches += 1
        keys = [(m.header.sender, m.header.control_id) for m in self.committed]
        receipts = []
        for message in messages:
            key = (message.header.sender, message.header.control_id)
            if key in keys:
                receipts.append(Receipt(keys.index(key) + 1, duplicate=True))
            else:
                self.committed.append(message)
                keys.append(key)
                receipts.append(Receipt(len(keys), duplicate=False))
        return receipts

    def quarantine(self, item: Rejected) -> int:
        if self.fail_quarantine:
            raise RuntimeError(f"database down; parameters: {item.raw!r}")
        self.rejected.append(item)
        return len(self.rejected)


class Clock:
    """Stands in for the ``time`` module inside connectors.files."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def records() -> Iterator[Records]:
    with captured("sidecar.connectors.files") as handler:
        yield handler


def config(
    tmp_path: Path, *, settle_s: float = 0.0, poll_interval_s: float = 1.0, renamed_only: bool = True
) -> DropFolderConfig:
    # Renamed-only by default: one scan takes a file, which is what most tests are about;
    # settling has its own tests below and in tests/security/test_drop_folder.py.
    return DropFolderConfig(
        root=tmp_path / "drop", settle_s=settle_s, poll_interval_s=poll_interval_s, renamed_only=renamed_only
    )


def drop(folder: DropFolder | DropFolderConfig, name: str, data: bytes) -> Path:
    cfg = folder._config if isinstance(folder, DropFolder) else folder
    cfg.incoming.mkdir(parents=True, exist_ok=True)
    path = cfg.incoming / name
    path.write_bytes(data)
    return path


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def count(db: Database, table: type[InboxEntry] | type[QuarantineEntry]) -> int:
    with db.sessions() as session:
        return session.execute(select(func.count()).select_from(table)).scalar_one()


# -- acceptance: the real inbox on SQLite ------------------------------------------------


def test_batch_file_of_500_messages_lands_in_the_inbox(tmp_path, inbox) -> None:
    db, sink = inbox
    notified: list[Receipt] = []
    folder = DropFolder(config(tmp_path), sink, on_committed=lambda r, m: notified.append(r))
    messages = [adt(f"A01-{n:05d}") for n in range(500)]
    drop(folder, "admissions.hl7", as_file(messages, eol=b"\r\n", batch=True, bom=True))

    [outcome] = folder.scan_once()

    ref = files.file_ref(tmp_path / "drop" / "done" / "admissions.hl7")
    assert outcome == FileOutcome(
        "admissions.hl7",
        FileStatus.DONE,
        messages=500,
        committed=500,
        moved_to=tmp_path / "drop" / "done" / "admissions.hl7",
        ref=ref,
    )
    assert count(db, InboxEntry) == 500
    assert count(db, QuarantineEntry) == 0
    assert names(tmp_path / "drop" / "done") == ["admissions.hl7"]
    assert names(tmp_path / "drop" / "incoming") == names(tmp_path / "drop" / "failed") == []
    assert len({r.inbox_id for r in notified}) == 500
    with db.sessions() as session:
        first = session.execute(select(InboxEntry).where(InboxEntry.control_id == "A01-00000")).scalar_one()
        last = session.execute(select(InboxEntry).where(InboxEntry.control_id == "A01-00499")).scalar_one()
    # Stored as the message itself: \r segment ends, no BOM, no batch envelope.
    assert first.raw == messages[0]
    # Known by the file's ref, never by its name (which may name a patient).
    assert ref.startswith("drop-") and "admissions" not in ref
    assert (first.source, first.peer, last.peer) == ("file", f"{ref}#1", f"{ref}#500")
    assert (first.charset, first.repaired) == ("utf-8", False)


def test_bad_message_is_quarantined_and_the_good_ones_are_stored(tmp_path, inbox) -> None:
    db, sink = inbox
    folder = DropFolder(config(tmp_path), sink)
    broken = adt("").replace(b"ADT1", b"BROKEN")  # empty MSH-10
    data = as_file([adt("M1"), broken, adt("M3"), adt("M4")], eol=b"\n")
    drop(folder, "mixed.hl7", data)

    [outcome] = folder.scan_once()

    assert outcome.status is FileStatus.FAILED
    assert (outcome.messages, outcome.committed, outcome.duplicates, outcome.quarantined) == (4, 3, 0, 1)
    failed = tmp_path / "drop" / "failed"
    assert names(failed) == ["mixed.hl7", "mixed.hl7" + REASON_SUFFIX]
    assert (failed / "mixed.hl7").read_bytes() == data  # the evidence, untouched
    reason = (failed / ("mixed.hl7" + REASON_SUFFIX)).read_text("utf-8")
    assert "message 2: MSH-10 (control id) is empty (bad-header)" in reason
    assert "message 1" not in reason and "message 3" not in reason
    assert "DOE" not in reason and "BROKEN" not in reason
    assert f"file: mixed.hl7\nref: {outcome.ref}\n" in reason
    with db.sessions() as session:
        stored = session.execute(select(InboxEntry.control_id).order_by(InboxEntry.id)).scalars().all()
        [row] = session.execute(select(QuarantineEntry)).scalars().all()
    assert stored == ["M1", "M3", "M4"]
    assert (row.source, row.peer, row.code) == ("file", f"{outcome.ref}#2", "bad-header")
    assert row.reason == "MSH-10 (control id) is empty"
    assert row.raw == broken


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"PID|1||12345^^^HOSP^MR||DOE^JANE\r\nthis is not HL7\r\n", "no MSH segment found"),
        (b"PID|1||12345^^^HOSP^MR||DOE^JANE\r" + adt("G1"), "segment before the first MSH"),
        (b"", "no MSH segment found"),
    ],
    ids=["no-msh", "orphan-segment", "empty"],
)
def test_unreadable_file_is_quarantined_whole(tmp_path, inbox, data, reason) -> None:
    db, sink = inbox
    folder = DropFolder(config(tmp_path), sink)
    drop(folder, "garbage.txt", data)

    [outcome] = folder.scan_once()

    assert (outcome.status, outcome.quarantined, outcome.messages) == (FileStatus.FAILED, 1, 0)
    failed = tmp_path / "drop" / "failed"
    assert names(failed) == ["garbage.txt", "garbage.txt" + REASON_SUFFIX]
    text = (failed / ("garbage.txt" + REASON_SUFFIX)).read_text("utf-8")
    assert f"whole file rejected: {reason} (ingest)" in text and "DOE" not in text
    assert count(db, InboxEntry) == 0
    with db.sessions() as session:
        [row] = session.execute(select(QuarantineEntry)).scalars().all()
    assert (row.peer, row.code, row.reason, row.raw) == (outcome.ref, "ingest", reason, data)


def test_oversized_file_is_failed_without_being_read(tmp_path, inbox, monkeypatch) -> None:
    db, sink = inbox
    folder = DropFolder(config(tmp_path), sink)  # default limit: 256 MiB
    path = drop(folder, "huge.hl7", b"")
    with path.open("r+b") as f:
        f.truncate(300 * 1024 * 1024)  # sparse: costs no disk, would cost memory if read

    def no_reading(*args: object) -> bytes:
        raise AssertionError("an oversized file must not be read")

    monkeypatch.setattr(files, "_read", no_reading)
    [outcome] = folder.scan_once()

    assert outcome.status is FileStatus.FAILED and "over the limit" in outcome.reason
    failed = tmp_path / "drop" / "failed"
    assert names(failed) == ["huge.hl7", "huge.hl7" + REASON_SUFFIX]
    assert (failed / "huge.hl7").stat().st_size == 300 * 1024 * 1024
    with db.sessions() as session:
        [row] = session.execute(select(QuarantineEntry)).scalars().all()
    assert (row.code, row.raw) == ("oversized", b"")


def test_the_same_file_dropped_twice_is_all_duplicates(tmp_path, inbox) -> None:
    db, sink = inbox
    notified: list[Receipt] = []
    folder = DropFolder(config(tmp_path), sink, on_committed=lambda r, m: notified.append(r))
    data = as_file([adt(f"D{n}") for n in range(5)], eol=b"\r\n")
    drop(folder, "first.hl7", data)
    assert folder.scan_once()[0].committed == 5

    drop(folder, "second-copy.hl7", data)
    [outcome] = folder.scan_once()

    assert (outcome.status, outcome.committed, outcome.duplicates) == (FileStatus.DONE, 0, 5)
    assert names(tmp_path / "drop" / "done") == ["first.hl7", "second-copy.hl7"]
    assert count(db, InboxEntry) == 5
    assert len(notified) == 5  # only new messages wake the pipeline
    with db.sessions() as session:
        assert set(session.execute(select(InboxEntry.resend_count)).scalars()) == {1}


def test_same_name_again_is_not_overwritten_in_done(tmp_path) -> None:
    folder = DropFolder(config(tmp_path), MemorySink())
    drop(folder, "daily.hl7", adt("X1"))
    first = folder.scan_once()[0].moved_to
    drop(folder, "daily.hl7", adt("X2"))
    second = folder.scan_once()[0].moved_to
    assert first is not None and second is not None

    assert first == tmp_path / "drop" / "done" / "daily.hl7"
    assert second != first and second.parent == first.parent
    assert second.name.startswith("daily.") and second.name.endswith(".hl7")
    assert (first.read_bytes(), second.read_bytes()) == (adt("X1"), adt("X2"))


# -- transient failures ------------------------------------------------------------------


def test_commit_failure_leaves_the_file_for_the_next_round(tmp_path, records) -> None:
    sink = MemorySink()
    sink.fail_commit = True
    folder = DropFolder(config(tmp_path), sink)
    path = drop(folder, "adt.hl7", as_file([adt("T1"), adt("T2")]))
    before = (path.read_bytes(), path.stat().st_mtime_ns)

    [outcome] = folder.scan_once()

    assert outcome.status is FileStatus.RETRY and "RuntimeError" in outcome.reason
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert names(tmp_path / "drop" / "done") == names(tmp_path / "drop" / "failed") == []
    assert PATIENT not in records.text() and "T1" not in records.text()

    sink.fail_commit = False
    [outcome] = folder.scan_once()
    assert (outcome.status, outcome.committed) == (FileStatus.DONE, 2)
    assert names(tmp_path / "drop" / "done") == ["adt.hl7"]


def test_quarantine_failure_leaves_the_file_and_the_retry_is_safe(tmp_path) -> None:
    sink = MemorySink()
    sink.fail_quarantine = True
    folder = DropFolder(config(tmp_path), sink)
    drop(folder, "mixed.hl7", as_file([adt("Q1"), b"MSH|^~\\&|too|few\r", adt("Q3")]))

    assert folder.scan_once()[0].status is FileStatus.RETRY
    assert names(tmp_path / "drop" / "incoming") == ["mixed.hl7"]
    assert [m.header.control_id for m in sink.committed] == ["Q1", "Q3"]

    sink.fail_quarantine = False
    [outcome] = folder.scan_once()
    assert (outcome.status, outcome.committed, outcome.duplicates, outcome.quarantined) == (
        FileStatus.FAILED,
        0,
        2,
        1,
    )
    assert [r.peer for r in sink.rejected] == [f"{outcome.ref}#2"]


def test_large_file_is_committed_in_chunks_and_a_failed_chunk_retries_safely(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(files, "COMMIT_CHUNK", 2)
    sink = MemorySink()
    sink.batch_limit = 1
    notified: list[int | None] = []
    folder = DropFolder(config(tmp_path), sink, on_committed=lambda r, m: notified.append(r.inbox_id))
    drop(folder, "five.hl7", as_file([adt(f"K{n}") for n in range(5)]))

    assert folder.scan_once()[0].status is FileStatus.RETRY
    assert names(tmp_path / "drop" / "incoming") == ["five.hl7"]
    assert notified == [1, 2]  # the chunk that was stored, before the failure

    sink.batch_limit = None
    [outcome] = folder.scan_once()
    assert (outcome.status, outcome.committed, outcome.duplicates) == (FileStatus.DONE, 3, 2)
    assert notified == [1, 2, 3, 4, 5]
    assert [m.header.control_id for m in sink.committed] == [f"K{n}" for n in range(5)]


@pytest.mark.integration
def test_batch_file_beyond_postgresql_bind_limit(tmp_path, pg_url) -> None:
    db = Database(Settings(data_dir=tmp_path / "data", database_url=pg_url))
    try:
        db.migrate()
        folder = DropFolder(config(tmp_path), DatabaseInbox(db))
        # 12 bind parameters per row: one INSERT of 6000 rows would exceed 65535.
        drop(folder, "backfill.hl7", as_file([adt(f"P{n:05d}") for n in range(6000)], batch=True))

        [outcome] = folder.scan_once()

        assert (outcome.status, outcome.committed) == (FileStatus.DONE, 6000)
        assert count(db, InboxEntry) == 6000
    finally:
        db.dispose()


# -- what is taken, and when -------------------------------------------------------------


def test_temporary_and_hidden_files_are_not_taken(tmp_path) -> None:
    sink = MemorySink()
    folder = DropFolder(config(tmp_path), sink)
    for name in ("upload.tmp", "upload.PART", ".hidden.hl7"):
        drop(folder, name, adt(name))
    (tmp_path / "drop" / "incoming" / "subfolder").mkdir()

    assert folder.scan_once() == []
    assert sink.committed == [] and sink.batches == 0
    assert names(tmp_path / "drop" / "incoming") == [".hidden.hl7", "subfolder", "upload.PART", "upload.tmp"]


def test_a_file_is_taken_only_once_it_has_settled(tmp_path, monkeypatch) -> None:
    clock = Clock()
    monkeypatch.setattr(files, "time", clock)
    sink = MemorySink()
    folder = DropFolder(config(tmp_path, settle_s=5.0, renamed_only=False), sink)
    path = drop(folder, "slow.hl7", adt("S1"))

    assert folder.scan_once() == []  # first sight
    clock.now += 4.9
    assert folder.scan_once() == []
    with path.open("ab") as f:  # the sender is still copying
        f.write(b"NK1|1|DOE^JOHN\r")
    clock.now += 4.9
    assert folder.scan_once() == []  # the change restarted the wait
    clock.now += 4.9
    assert folder.scan_once() == []
    clock.now += 0.2
    [outcome] = folder.scan_once()
    assert outcome.status is FileStatus.DONE
    assert sink.committed[0].raw.endswith(b"NK1|1|DOE^JOHN\r")


def test_a_file_that_changes_while_read_is_not_taken_half_written(tmp_path) -> None:
    path = tmp_path / "f.hl7"
    path.write_bytes(adt("C1"))
    stamp = files._Stamp.of(path.lstat())
    fd = os.open(path, os.O_RDONLY)
    try:
        splitter = files._read(fd, stamp, 1024)
        assert splitter is not None and splitter.close() == [adt("C1")]
        os.lseek(fd, 0, os.SEEK_SET)
        assert files._read(fd, stamp._replace(size=stamp.size - 1), 1024) is None  # grew
        os.lseek(fd, 0, os.SEEK_SET)
        assert files._read(fd, stamp._replace(mtime_ns=stamp.mtime_ns - 1), 1024) is None  # rewritten
    finally:
        os.close(fd)


def test_a_symlink_or_fifo_dropped_goes_to_failed_unread(tmp_path, records) -> None:
    sink = MemorySink()
    folder = DropFolder(config(tmp_path), sink)
    target = tmp_path / "elsewhere.hl7"
    target.write_bytes(adt("E1"))
    incoming = tmp_path / "drop" / "incoming"
    incoming.mkdir(parents=True)
    (incoming / "link.hl7").symlink_to(target)
    os.mkfifo(incoming / "pipe.hl7")

    outcomes = folder.scan_once()

    assert [(o.name, o.status) for o in outcomes] == [
        ("link.hl7", FileStatus.FAILED),
        ("pipe.hl7", FileStatus.FAILED),
    ]
    assert [(r.code, r.raw) for r in sink.rejected] == [("not-regular", b""), ("not-regular", b"")]
    assert "symbolic link" in sink.rejected[0].reason and "not a regular file" in sink.rejected[1].reason
    assert sink.committed == []
    failed = tmp_path / "drop" / "failed"
    assert (failed / "link.hl7").is_symlink() and (failed / "link.hl7").resolve() == target
    assert target.read_bytes() == adt("E1")
    assert names(incoming) == []


def test_a_reason_file_is_never_written_through_a_planted_symlink(tmp_path) -> None:
    folder = DropFolder(config(tmp_path), MemorySink())
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    failed = tmp_path / "drop" / "failed"
    failed.mkdir(parents=True)
    (failed / ("bad.hl7" + REASON_SUFFIX)).symlink_to(victim)  # taken name: a new one is chosen
    (failed / ".reason-being-written.tmp").symlink_to(victim)  # the old fixed scratch name
    drop(folder, "bad.hl7", b"not hl7\r")

    [outcome] = folder.scan_once()

    assert outcome.status is FileStatus.FAILED and outcome.moved_to is not None
    assert outcome.moved_to.name != "bad.hl7"
    assert victim.read_bytes() == b"keep me"
    assert (failed / (outcome.moved_to.name + REASON_SUFFIX)).read_text("utf-8").startswith("file: bad.hl7\n")


def test_file_names_reach_no_log_line(tmp_path, records) -> None:
    sink = MemorySink()
    sink.fail_commit = True
    folder = DropFolder(config(tmp_path), sink)
    name = "DOE_JANE_MRN998877.hl7"
    drop(folder, name, as_file([adt("Z1"), b"MSH|^~\\&|bad\r"]))
    assert folder.scan_once()[0].status is FileStatus.RETRY
    sink.fail_commit = False
    assert folder.scan_once()[0].status is FileStatus.FAILED
    drop(folder, "MRN998877.hl7", b"")
    (tmp_path / "drop" / "incoming" / "MRN998877-link.hl7").symlink_to(tmp_path)

    folder.scan_once()

    assert {"files.retry", "files.failed", "files.rejected"} <= {
        getattr(r, "event", "") for r in records.records
    }
    assert "MRN998877" not in records.text() and "JANE" not in records.text()


def test_files_are_taken_in_name_order_one_commit_each(tmp_path) -> None:
    sink = MemorySink()
    folder = DropFolder(config(tmp_path), sink)
    for name in ("c.hl7", "a.hl7", "b.hl7"):
        drop(folder, name, as_file([adt(f"{name}-1"), adt(f"{name}-2")]))

    outcomes = folder.scan_once()

    assert [o.name for o in outcomes] == ["a.hl7", "b.hl7", "c.hl7"]
    assert sink.batches == 3
    assert [m.peer for m in sink.committed[:2]] == [f"{outcomes[0].ref}#1", f"{outcomes[0].ref}#2"]


def test_on_committed_failure_is_swallowed(tmp_path, records) -> None:
    def explode(receipt: Receipt, message: InboundMessage) -> None:
        raise ValueError("listener bug")

    folder = DropFolder(config(tmp_path), MemorySink(), on_committed=explode)
    drop(folder, "a.hl7", adt("N1"))

    assert folder.scan_once()[0].status is FileStatus.DONE
    assert "files.notify_failed" in [getattr(r, "event", "") for r in records.records]


def test_long_file_names_fit_the_peer_column_and_the_filesystem(tmp_path) -> None:
    sink = MemorySink()
    folder = DropFolder(config(tmp_path), sink)
    name = "x" * 246 + ".hl7"  # 250 bytes: the reason file's name would not fit as is
    drop(folder, name, as_file([adt("L1"), b"MSH|^~\\&|bad\r"]))

    [outcome] = folder.scan_once()

    assert outcome.status is FileStatus.FAILED and outcome.moved_to is not None
    assert len(sink.committed[0].peer) <= 128 and sink.committed[0].peer.endswith("#1")
    assert outcome.moved_to.name.endswith(".hl7") and len(outcome.moved_to.name) < len(name)
    assert (outcome.moved_to.parent / (outcome.moved_to.name + REASON_SUFFIX)).is_file()


def test_config_is_validated(tmp_path) -> None:
    with pytest.raises(ValueError):
        DropFolderConfig(root=tmp_path, poll_interval_s=0)
    with pytest.raises(ValueError):
        DropFolderConfig(root=tmp_path, settle_s=-1)
    with pytest.raises(ValueError):
        DropFolderConfig(root=tmp_path, max_message_bytes=0)
    with pytest.raises(ValueError):
        DropFolderConfig(root=tmp_path, incomplete_after_s=0)


# -- background thread -------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_background_thread_takes_dropped_files(tmp_path, records) -> None:
    sink = MemorySink()
    notified = threading.Event()
    cfg = config(tmp_path, poll_interval_s=0.05)
    folder = DropFolder(cfg, sink, on_committed=lambda r, m: notified.set())
    folder.start()
    try:
        # The root does not exist yet: failing rounds are logged, the thread lives on.
        assert wait_for(lambda: "files.scan_failed" in [getattr(r, "event", "") for r in records.records])
        cfg.incoming.mkdir(parents=True)
        partial = cfg.incoming / "bg.hl7.part"
        partial.write_bytes(as_file([adt("B1"), adt("B2")], eol=b"\r\n"))
        os.replace(partial, cfg.incoming / "bg.hl7")  # how a well-behaved sender drops
        assert wait_for(lambda: names(cfg.done) == ["bg.hl7"])
        assert notified.is_set() and len(sink.committed) == 2
    finally:
        assert folder.stop(timeout=10)
    folder.start()  # restartable after a stop
    try:
        with pytest.raises(RuntimeError):
            folder.start()
    finally:
        assert folder.stop(timeout=10)


# -- splitting as it reads -----------------------------------------------------------------

_LINES = st.sampled_from(
    [
        b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X|P|2.5",
        b"PID|1||1^^^H^MR||DOE^JANE",
        b"OBX|1|ST|X||" + b"v" * 40,
        b"OBX|2|ED|X||" + b"z" * 300,  # longer than any cap drawn: held in part only
        b" " * 300,
        b"MSH|^~\\&|LONG|" + b"m" * 300,
        b"FHS|^~\\&",
        b"BTS|1",
        b"MSHX|not a header",
        b"  \tNTE|1",
        BOM + b"MSH|^~\\&|BOM",
        b"",
        b"   ",
        BOM,
    ]
)
_BREAKS = st.sampled_from([b"\r", b"\n", b"\r\n", b"\x0b", b"\x1c", b"\x1a"])


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.tuples(_LINES, _BREAKS), max_size=12),
    tail=_LINES,
    chunk=st.integers(1, 64),
    cap=st.integers(1, 200),
)
def test_the_splitter_splits_as_split_messages_does(lines, tail, chunk, cap) -> None:
    data = b"".join(line + brk for line, brk in lines) + tail
    try:
        expected: list[bytes] | str = split_messages(data)
    except IngestError as exc:
        expected = str(exc)
    splitter = files._Splitter(cap)
    for start in range(0, len(data), chunk):
        splitter.feed(data[start : start + chunk])
    try:
        got: list[bytes | files._Oversized] | str = splitter.close()
    except IngestError as exc:
        got = str(exc)

    assert bytes(splitter.prefix) == data[:cap]
    if isinstance(expected, str) or isinstance(got, str):
        assert got == expected
        return
    assert len(got) == len(expected)
    for message, item in zip(expected, got, strict=True):
        if len(message) <= cap:
            assert item == message
        else:  # over the cap: its size and its first cap bytes, never more
            assert item == files._Oversized(message[:cap], len(message))


def test_a_message_of_exactly_the_cap_is_kept_and_one_byte_more_is_not() -> None:
    message = adt("CAP1")
    for cap, expected in (
        (len(message), message),
        (len(message) - 1, files._Oversized(message[:-1], len(message))),
    ):
        splitter = files._Splitter(cap)
        splitter.feed(message)
        assert splitter.close() == [expected]
