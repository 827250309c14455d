"""The drop-folder connector: HL7 v2 files from a shared folder into the inbox.

Layout under the root: ``incoming/`` (senders drop files here), ``done/`` (every message
of the file is in the inbox), ``failed/`` (something could not be taken; the file stays
whole beside ``<name>.reason.txt``). A file leaves ``incoming/`` only after its messages
are durably committed and its rejects quarantined, so a crash or a database outage
before the move leaves the file in ``incoming/``; taking it again is safe, because the
inbox recognises resends by (sender, control id).

What is taken: a regular file that is the very one the scan saw (opened with
``O_NOFOLLOW`` relative to ``incoming/``, then checked by ``fstat``), with a single link,
and complete: unchanged across two scans ``settle_s`` apart and ending at a segment
boundary, or, with ``renamed_only``, at first sight (senders rename files into place).
Anything else is left to settle again or moved to ``failed/`` with the reason; it is
never read. Files are read in chunks and split as they are read, so a message over
``max_message_bytes`` is quarantined (with its first bytes) without ever being held whole.

Read-only toward the hospital: nothing is written but our own moves and reason files.
File names may name a patient: logs, audit entries and inbox/quarantine rows know a file
only by its ref (:func:`file_ref`), which the reason file beside a failed file repeats.
Logs and reason files carry refs, numbers, counts and codes, never message content; sink
exceptions are logged by type only (database drivers put statement parameters, i.e. the
raw message, into their text; OS errors put the file name into theirs).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import stat
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from connectors.base import CommitListener, InboundMessage, MessageSink, Receipt, Rejected, notify_committed
from connectors.hl7.charset import decode_message
from connectors.hl7.header import MessageHeader, peek_header
from core.errors import IngestError

__all__ = ["REASON_SUFFIX", "DropFolder", "DropFolderConfig", "FileOutcome", "FileStatus", "file_ref"]

log = logging.getLogger("sidecar.connectors.files")

SOURCE = "file"
REASON_SUFFIX = ".reason.txt"
COMMIT_CHUNK = 1000  # messages per sink.commit_many call (see DropFolder._commit)
READ_CHUNK = 1024 * 1024  # bytes per read: bounds memory and each stretch of splitting
_IGNORED_SUFFIXES = (".tmp", ".part", "~")  # write-then-rename: still being written
_MiB = 1024 * 1024
_NAME_MAX = 255  # bytes per file name on common filesystems
# A complete HL7 file ends with a segment terminator (or an MLLP/DOS end mark).
_SEGMENT_ENDS = frozenset(b"\r\n\x1c\x1a")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class DropFolderConfig:
    root: Path
    poll_interval_s: float = 1.0
    settle_s: float = 0.5
    max_file_bytes: int = 256 * _MiB
    max_message_bytes: int = _MiB  # the MLLP listener's frame cap
    # Unchanged this long yet not ending at a segment boundary: failed as incomplete.
    incomplete_after_s: float = 300.0
    # Take files at first sight: senders write under a temporary name and rename.
    renamed_only: bool = False
    # MSH-18 empty: the charset to assume, per header (the same policy as the listener).
    default_charset: Callable[[MessageHeader], str] | None = None

    def __post_init__(self) -> None:
        if self.poll_interval_s <= 0 or self.settle_s < 0 or self.incomplete_after_s <= 0:
            raise ValueError("poll_interval_s and incomplete_after_s must be positive, settle_s >= 0")
        if self.max_file_bytes <= 0 or self.max_message_bytes <= 0:
            raise ValueError("max_file_bytes and max_message_bytes must be positive")

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def failed(self) -> Path:
        return self.root / "failed"


class FileStatus(StrEnum):
    DONE = "done"  # every message is in the inbox (new or resend); file in done/
    FAILED = "failed"  # file in failed/ with a reason file; its good messages are stored
    RETRY = "retry"  # storing failed; file left untouched in incoming/ for the next round


@dataclass(frozen=True)
class FileOutcome:
    name: str
    status: FileStatus
    messages: int = 0
    committed: int = 0  # newly stored
    duplicates: int = 0  # already in the inbox (resends)
    quarantined: int = 0
    reason: str = ""  # why failed or retried; never message content
    moved_to: Path | None = None
    ref: str = ""  # what logs, audit entries and rows know the file by (file_ref)


class _Stamp(NamedTuple):
    """What the scan saw (lstat): it must stay still to settle, and be what is opened."""

    size: int
    mtime_ns: int
    dev: int
    ino: int
    mode: int
    nlink: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Stamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, st.st_mode, st.st_nlink)


@dataclass
class _Seen:
    stamp: _Stamp
    since: float  # monotonic time the stamp was first seen
    scans: int = 1  # scans that saw this stamp


class _Dirs(NamedTuple):
    incoming: int
    done: int
    failed: int


class _StoreFailed(Exception):
    """The sink raised: transient by assumption (database down), so the file waits."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


class _Refused(Exception):
    """The file is not taken as it is: failed/ with this reason, unread."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def file_ref(path: Path) -> str:
    """The file's ref: a hash of its identity on disk (device, inode, mtime), not of its name.

    Stable while the file is retried and after its move to done/ or failed/ (a rename keeps
    all three), so an operator can find a row's file with ``file_ref``; unlike a hash of the
    name, it cannot be used to confirm a guessed patient name.
    """
    return _ref(_Stamp.of(path.lstat()))


def _ref(stamp: _Stamp) -> str:
    key = f"{stamp.dev}:{stamp.ino}:{stamp.mtime_ns}".encode()
    return "drop-" + hashlib.sha256(key).hexdigest()[:16]


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(_IGNORED_SUFFIXES)


def _display(name: str) -> str:
    # POSIX names are bytes: undecodable ones come back with lone surrogates, which
    # neither the database driver nor a text file can encode.
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _frames(exc: BaseException) -> str:
    """Where an exception came from, without its message (an OS error's names the file)."""
    return "".join(traceback.format_tb(exc.__traceback__))


# -- splitting, bounded ------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"
# The line breaks of connectors.hl7.batch one byte at a time: \r\n gives an extra empty
# line, which is skipped like every blank one.
_BREAK = re.compile(b"[\r\n\x0b\x1c\x1a]")
_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")
_LEAD_MARGIN = 64  # bytes of a line held beyond the cap (see _Splitter._extend)


class _Oversized(NamedTuple):
    head: bytes  # the message's first max_message_bytes, for the quarantine row
    size: int  # the whole message's size as it would have been stored


def _segment_id(line: bytes) -> bytes:
    # A segment id is three characters followed by the field separator (or nothing).
    if len(line) > 3 and line[3:4].isalnum():
        return b""
    return line[:3]


class _Splitter:
    """``connectors.hl7.batch.split_messages`` fed chunk by chunk, holding at most
    ``cap`` bytes of any one message (and of any one line): a message over the cap
    becomes an :class:`_Oversized` with its first ``cap`` bytes. ``prefix`` keeps the
    file's first ``cap`` bytes, the evidence when the whole file is rejected."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self.prefix = bytearray()
        self._items: list[bytes | _Oversized] = []
        self._orphans = False
        self._open = False  # inside a message (an MSH was seen)
        self._segments: list[bytes] = []  # of the current message, while under the cap
        self._size = 0
        self._head: bytes | None = None  # set once the current message is over the cap
        self._line = bytearray()  # the current line's first bytes (cap + 1 + _LEAD_MARGIN)
        self._line_len = 0
        self._rest_blank = True  # the bytes beyond those held are all whitespace

    def feed(self, chunk: bytes) -> None:
        if len(self.prefix) < self._cap:
            self.prefix += chunk[: self._cap - len(self.prefix)]
        parts = _BREAK.split(chunk)
        for part in parts[:-1]:
            self._extend(part)
            self._end_line()
        self._extend(parts[-1])

    def close(self) -> list[bytes | _Oversized]:
        """Each message (bytes, \\r-terminated segments) or its oversized stand-in."""
        self._end_line()
        self._end_message()
        if not self._items:
            raise IngestError("no MSH segment found")
        if self._orphans:
            raise IngestError("segment before the first MSH")
        return self._items

    def _extend(self, part: bytes) -> None:
        self._line_len += len(part)
        # The margin holds a BOM and leading blanks beyond the cap, to classify the line.
        room = self._cap + 1 + _LEAD_MARGIN - len(self._line)
        self._line += part[: max(room, 0)]
        if room < len(part) and self._rest_blank and part[max(room, 0) :].strip():
            self._rest_blank = False

    def _end_line(self) -> None:
        held, full, rest_blank = bytes(self._line), self._line_len, self._rest_blank
        self._line, self._line_len, self._rest_blank = bytearray(), 0, True
        line = held.removeprefix(_BOM).lstrip(b" \t")
        if not line.strip() and rest_blank:
            return
        segment_id = _segment_id(line)
        if segment_id in _ENVELOPE:
            return
        if segment_id == b"MSH":
            self._end_message()
            self._open = True
        elif not self._open:
            self._orphans = True
            return
        self._add(line, full - (len(held) - len(line)) + 1, truncated=full > len(held))

    def _add(self, line: bytes, size: int, *, truncated: bool) -> None:
        self._size += size
        if self._head is None and not truncated and self._size <= self._cap:
            self._segments.append(line + b"\r")
        elif self._head is None:
            self._head = (b"".join(self._segments) + line + b"\r")[: self._cap]
            self._segments = []

    def _end_message(self) -> None:
        if self._open:
            done = b"".join(self._segments) if self._head is None else _Oversized(self._head, self._size)
            self._items.append(done)
        self._open, self._segments, self._size, self._head = False, [], 0, None


# -- the connector -----------------------------------------------------------------------


class DropFolder:
    def __init__(
        self,
        config: DropFolderConfig,
        sink: MessageSink,
        *,
        on_committed: CommitListener | None = None,
    ) -> None:
        self._config = config
        self._sink = sink
        self._on_committed = on_committed
        self._seen: dict[str, _Seen] = {}
        self._scan_lock = threading.Lock()  # the thread and direct callers never overlap
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("drop folder already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="drop-folder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop after the file in hand (never midway); False if the thread outlived timeout."""
        thread = self._thread
        if thread is None:
            return True
        self._stop.set()
        thread.join(timeout)
        if thread.is_alive():
            log.warning("drop folder stop timed out", extra={"event": "files.stop_timeout"})
            return False
        self._thread = None
        return True

    def _run(self) -> None:
        log.info("drop folder watching", extra={"event": "files.watching", "root": str(self._config.root)})
        while not self._stop.is_set():
            try:
                self._scan(self._stop)
            except Exception as exc:
                # E.g. the share is unmounted: try again next round, the thread never dies.
                log.error(
                    "drop folder scan failed",
                    extra={
                        "event": "files.scan_failed",
                        "error": type(exc).__name__,
                        # E.g. ELOOP: a folder of the layout was replaced by a symlink.
                        "errno": errno.errorcode.get(getattr(exc, "errno", None) or 0, ""),
                    },
                )
            self._stop.wait(self._config.poll_interval_s)

    # -- scanning --------------------------------------------------------------------

    def scan_once(self) -> list[FileOutcome]:
        """Take every settled file in incoming/, in name order."""
        return self._scan(None)

    def _scan(self, stop: threading.Event | None) -> list[FileOutcome]:
        with self._scan_lock:
            for folder in (self._config.incoming, self._config.done, self._config.failed):
                # No parents=True: a missing root (an unmounted share) must fail loudly,
                # not be silently recreated on the local disk.
                folder.mkdir(exist_ok=True)
            outcomes: list[FileOutcome] = []
            with self._open_dirs() as dirs:
                for name, seen in self._settled_files(dirs.incoming):
                    if stop is not None and stop.is_set():
                        break
                    outcome = self._process(dirs, name, seen)
                    if outcome is not None:
                        outcomes.append(outcome)
            return outcomes

    @contextmanager
    def _open_dirs(self) -> Iterator[_Dirs]:
        # Everything below works relative to these descriptors, so a folder swapped for a
        # symlink mid-scan cannot redirect a read or a move (O_NOFOLLOW: not one now).
        fds: list[int] = []
        try:
            for folder in (self._config.incoming, self._config.done, self._config.failed):
                fds.append(os.open(folder, _DIR_FLAGS))
            yield _Dirs(*fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _settled_files(self, incoming: int) -> list[tuple[str, _Seen]]:
        now = time.monotonic()
        with os.scandir(incoming) as it:
            entries = sorted((e for e in it if not _ignored(e.name)), key=lambda e: e.name)
        ready: list[tuple[str, _Seen]] = []
        present: set[str] = set()
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                continue  # subfolders are the site's own business
            present.add(entry.name)
            stamp = _Stamp.of(st)
            seen = self._seen.get(entry.name)
            if seen is None or seen.stamp != stamp:
                seen = self._seen[entry.name] = _Seen(stamp, now)
            else:
                seen.scans += 1
            # Settled: the same stamp in two scans, settle_s apart at least; a file renamed
            # into place is complete when it appears.
            if self._config.renamed_only or (seen.scans >= 2 and now - seen.since >= self._config.settle_s):
                ready.append((entry.name, seen))
        for gone in self._seen.keys() - present:
            del self._seen[gone]
        return ready

    # -- one file --------------------------------------------------------------------

    def _process(self, dirs: _Dirs, name: str, seen: _Seen) -> FileOutcome | None:
        ref = _ref(seen.stamp)
        try:
            outcome = self._take(dirs, name, seen, ref)
        except _StoreFailed as exc:
            error = type(exc.__cause__).__name__
            log.error(
                "drop file not stored; retrying next round",
                extra={"event": "files.retry", "ref": ref, "stage": exc.stage, "error": error},
            )
            return FileOutcome(name, FileStatus.RETRY, reason=f"{exc.stage} failed ({error})", ref=ref)
        except Exception as exc:
            # A bug or a filesystem error costs this round for this file, never the scan.
            log.error(
                "drop file handling failed",
                extra={"event": "files.bug", "ref": ref, "error": type(exc).__name__, "trace": _frames(exc)},
            )
            return FileOutcome(name, FileStatus.RETRY, reason="unexpected error", ref=ref)
        if outcome is not None:
            self._seen.pop(name, None)
        return outcome

    def _take(self, dirs: _Dirs, name: str, seen: _Seen, ref: str) -> FileOutcome | None:
        received_at = datetime.now(UTC)
        try:
            fd = _open_scanned(dirs.incoming, name, seen.stamp)
        except _Refused as exc:
            return self._reject_file(
                dirs, name, ref, Rejected(b"", SOURCE, ref, exc.reason, exc.code, received_at)
            )
        if fd is None:
            self._settle_again(name, ref, "changed since the scan")
            return None
        with _closing(fd):
            size = os.fstat(fd).st_size
            limit = self._config.max_file_bytes
            if size > limit:
                # Checked on the opened file: it may have grown since the scan.
                reason = f"file is {size} bytes, over the limit of {limit} bytes; not read"
                # Empty raw: the evidence is the file in failed/, the row makes it visible.
                item = Rejected(b"", SOURCE, ref, reason, "oversized", received_at)
                return self._reject_file(dirs, name, ref, item)
            if size != seen.stamp.size:
                self._settle_again(name, ref, "changed since the scan")
                return None
            if not self._config.renamed_only and not _ends_a_segment(fd, size):
                if time.monotonic() - seen.since < self._config.incomplete_after_s:
                    return None  # perhaps still being written: wait, keeping the stamp
                what = "is empty" if size == 0 else "does not end at a segment boundary"
                reason = (
                    f"{what} and unchanged for {self._config.incomplete_after_s:g} s: incomplete; not read"
                )
                item = Rejected(b"", SOURCE, ref, reason, "incomplete", received_at)
                return self._reject_file(dirs, name, ref, item)
            splitter = _read(fd, seen.stamp, self._config.max_message_bytes)
        if splitter is None:
            self._settle_again(name, ref, "changed while read")
            return None
        try:
            items = splitter.close()
        except IngestError as exc:
            item = Rejected(bytes(splitter.prefix), SOURCE, ref, str(exc), exc.code, received_at)
            return self._reject_file(dirs, name, ref, item)
        return self._store(dirs, name, ref, items, received_at)

    def _settle_again(self, name: str, ref: str, why: str) -> None:
        self._seen.pop(name, None)
        log.info("drop file not taken yet", extra={"event": "files.unsettled", "ref": ref, "why": why})

    def _store(
        self, dirs: _Dirs, name: str, ref: str, items: list[bytes | _Oversized], received_at: datetime
    ) -> FileOutcome:
        good: list[InboundMessage] = []
        bad: list[tuple[int, Rejected]] = []
        cap = self._config.max_message_bytes
        for number, raw in enumerate(items, 1):
            peer = f"{ref}#{number}"
            if isinstance(raw, _Oversized):
                reason = (
                    f"message is {raw.size} bytes, over the limit of {cap} bytes; "
                    f"only its first {len(raw.head)} bytes are kept"
                )
                bad.append((number, Rejected(raw.head, SOURCE, peer, reason, "oversized", received_at)))
                continue
            try:
                header = peek_header(raw)
            except IngestError as exc:
                bad.append((number, Rejected(raw, SOURCE, peer, str(exc), exc.code, received_at)))
                continue
            default = self._config.default_charset(header) if self._config.default_charset else "UTF-8"
            decoded = decode_message(raw, header.charset, default=default)
            good.append(
                InboundMessage(raw, header, decoded.charset, decoded.repaired, SOURCE, peer, received_at)
            )

        # Commit before quarantining: when the database is down the commit fails first,
        # so a retried file does not leave duplicate quarantine rows behind.
        receipts = self._commit(good)
        for _, item in bad:
            self._quarantine(item)

        new = sum(not r.duplicate for r in receipts)
        if bad:
            status = FileStatus.FAILED
            reason = f"{len(bad)} of {len(items)} messages rejected (the others are stored)"
            lines = [reason, *(f"message {number}: {item.reason} ({item.code})" for number, item in bad)]
            moved = self._move(dirs, name, ref, failed=True, reason_lines=lines)
        else:
            status, reason = FileStatus.DONE, ""
            moved = self._move(dirs, name, ref, failed=False)
        outcome = FileOutcome(
            name,
            status,
            messages=len(items),
            committed=new,
            duplicates=len(receipts) - new,
            quarantined=len(bad),
            reason=reason,
            moved_to=moved,
            ref=ref,
        )
        log.log(
            logging.WARNING if bad else logging.INFO,
            "drop file partly rejected" if bad else "drop file done",
            extra={
                "event": f"files.{status}",
                "ref": ref,
                "messages": outcome.messages,
                "committed": outcome.committed,
                "duplicates": outcome.duplicates,
                "quarantined": outcome.quarantined,
                "codes": sorted({item.code for _, item in bad}),
            },
        )
        return outcome

    def _reject_file(self, dirs: _Dirs, name: str, ref: str, item: Rejected) -> FileOutcome:
        """The whole file is not taken as HL7: quarantine it, then move it aside."""
        self._quarantine(item)
        moved = self._move(
            dirs, name, ref, failed=True, reason_lines=[f"whole file rejected: {item.reason} ({item.code})"]
        )
        log.warning("drop file rejected", extra={"event": "files.rejected", "ref": ref, "code": item.code})
        return FileOutcome(
            name, FileStatus.FAILED, quarantined=1, reason=item.reason, moved_to=moved, ref=ref
        )

    # -- sink ------------------------------------------------------------------------

    def _commit(self, messages: list[InboundMessage]) -> list[Receipt]:
        receipts: list[Receipt] = []
        # Chunked because one multi-row INSERT is capped by the database's bind-parameter
        # limit (PostgreSQL: 65535, i.e. ~5400 inbox rows): a larger batch file would fail
        # on every round. Chunks are safe: after a failed chunk the whole file is taken
        # again and the chunks already stored come back as resends.
        for start in range(0, len(messages), COMMIT_CHUNK):
            chunk = messages[start : start + COMMIT_CHUNK]
            try:
                stored = self._sink.commit_many(chunk)
            except Exception as exc:
                raise _StoreFailed("commit") from exc
            if len(stored) != len(chunk):
                raise RuntimeError("the sink returned a receipt count unlike the message count")
            # Notified per chunk: on a retry, these come back as duplicates and are not.
            for receipt, message in zip(stored, chunk, strict=True):
                if not receipt.duplicate:
                    self._notify(receipt, message)
            receipts.extend(stored)
        return receipts

    def _quarantine(self, item: Rejected) -> None:
        try:
            quarantine_id = self._sink.quarantine(item)
        except Exception as exc:
            raise _StoreFailed("quarantine") from exc
        log.info(
            "drop file content quarantined",
            extra={
                "event": "files.quarantined",
                "peer": item.peer,
                "code": item.code,
                "quarantine_id": quarantine_id,
                "nbytes": len(item.raw),
            },
        )

    def _notify(self, receipt: Receipt, message: InboundMessage) -> None:
        notify_committed(self._on_committed, receipt, message, log, "files.notify_failed")

    # -- moves -----------------------------------------------------------------------

    def _move(
        self, dirs: _Dirs, name: str, ref: str, *, failed: bool, reason_lines: list[str] | None = None
    ) -> Path:
        folder, fd = (self._config.failed, dirs.failed) if failed else (self._config.done, dirs.done)
        target = _free_name(fd, name)
        if reason_lines is not None:
            # Written before the move, so a file in failed/ always has its reason beside it.
            text = "\n".join([f"file: {_display(name)}", f"ref: {ref}", *reason_lines]) + "\n"
            _write_new(fd, target + REASON_SUFFIX, text.encode("utf-8"))
        # A rename moves the entry itself: a symlink or FIFO is moved, never followed.
        os.replace(name, target, src_dir_fd=dirs.incoming, dst_dir_fd=fd)
        return folder / target


# -- file system helpers -----------------------------------------------------------------


def _open_scanned(incoming: int, name: str, stamp: _Stamp) -> int | None:
    """A descriptor of the very regular file the scan saw (same device and inode), or None
    when it is gone or was replaced (settle again); _Refused when it must not be read."""
    if stat.S_ISLNK(stamp.mode):
        raise _Refused("is a symbolic link; not followed", "not-regular")
    if not stat.S_ISREG(stamp.mode):
        raise _Refused("is not a regular file; not read", "not-regular")
    try:
        # O_NOFOLLOW: a symlink swapped in since the scan fails here instead of being
        # followed; O_NONBLOCK: a FIFO swapped in does not hang the open.
        fd = os.open(name, _OPEN_FLAGS, dir_fd=incoming)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Refused("is a symbolic link; not followed", "not-regular") from None
        if exc.errno == errno.ENXIO:  # a socket swapped in
            raise _Refused("is not a regular file; not read", "not-regular") from None
        raise
    with _closing_on_error(fd):
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("is not a regular file; not read", "not-regular")
        if (st.st_dev, st.st_ino) != (stamp.dev, stamp.ino):
            os.close(fd)
            return None
        if st.st_nlink > 1:
            # Another name of the same file may sit anywhere on this filesystem (a key, a
            # database): a hard link is no more to be followed than a symlink.
            raise _Refused(f"has {st.st_nlink} hard links; not read", "not-regular")
    return fd


@contextmanager
def _closing_on_error(fd: int) -> Iterator[None]:
    try:
        yield
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _ends_a_segment(fd: int, size: int) -> bool:
    """Whether the file's last byte ends a segment: read alone, before the rest."""
    last = os.pread(fd, 1, size - 1) if size > 0 else b""
    return len(last) == 1 and last[0] in _SEGMENT_ENDS


def _read(fd: int, stamp: _Stamp, cap: int) -> _Splitter | None:
    """The file split as it is read, chunk by chunk; None when it changed meanwhile."""
    splitter = _Splitter(cap)
    total = 0
    while chunk := os.read(fd, READ_CHUNK):
        total += len(chunk)
        if total > stamp.size:
            return None
        splitter.feed(chunk)
    st = os.fstat(fd)
    if total != stamp.size or (st.st_size, st.st_mtime_ns) != (stamp.size, stamp.mtime_ns):
        return None
    return splitter


def _write_new(folder: int, name: str, data: bytes) -> None:
    """``folder/name`` := data, atomically; a symlink planted at either name is replaced,
    never written through."""
    scratch = f".reason-{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with _closing(os.open(scratch, flags, 0o640, dir_fd=folder)) as fd:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    os.replace(scratch, name, src_dir_fd=folder, dst_dir_fd=folder)


def _exists(folder: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _free_name(folder: int, name: str) -> str:
    """``name``, or a timestamped variant when taken in ``folder``: a move never overwrites.

    Checking then replacing is only safe because this connector is the one writer of
    done/ and failed/ (run one DropFolder per root).
    """
    stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
    tag = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    attempt = 0
    target = _fit(stem, dot + ext)
    while _exists(folder, target) or _exists(folder, target + REASON_SUFFIX):
        attempt += 1
        target = _fit(stem, f".{tag}{'' if attempt == 1 else f'-{attempt}'}{dot}{ext}")
    return target


def _fit(stem: str, tail: str) -> str:
    # A name the filesystem refuses would make the move fail every round, forever; the
    # reason file's longer name must fit too.
    while len(stem) > 1 and len(os.fsencode(stem + tail + REASON_SUFFIX)) > _NAME_MAX:
        stem = stem[:-1]
    return stem + tail
