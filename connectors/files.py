"""The drop-folder connector: HL7 v2 files from a shared folder into the inbox.

Layout under the root: ``incoming/`` (senders drop files here), ``done/`` (every message
of the file is in the inbox), ``failed/`` (something could not be taken; the file stays
whole beside ``<name>.reason.txt``). A file leaves ``incoming/`` only after its messages
are durably committed and its rejects quarantined, so a crash or a database outage
before the move leaves the file in ``incoming/``; taking it again is safe, because the
inbox recognises resends by (sender, control id).

Read-only toward the hospital: nothing is written but our own moves and reason files.
Logs and reason files carry file names, numbers, counts and codes, never message content;
sink exceptions are logged by type only (database drivers put statement parameters, i.e.
the raw message, into their text).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from connectors.base import CommitListener, InboundMessage, MessageSink, Receipt, Rejected, notify_committed
from connectors.hl7.batch import split_messages
from connectors.hl7.charset import decode_message
from connectors.hl7.header import MessageHeader, peek_header
from core.errors import IngestError

log = logging.getLogger("sidecar.connectors.files")

SOURCE = "file"
REASON_SUFFIX = ".reason.txt"
COMMIT_CHUNK = 1000  # messages per sink.commit_many call (see DropFolder._commit)
_IGNORED_SUFFIXES = (".tmp", ".part")  # write-then-rename: still being written
_PEER_MAX = 128  # width of the inbox.peer and quarantine.peer columns
_MiB = 1024 * 1024
_NAME_MAX = 255  # bytes per file name on common filesystems

_Stamp = tuple[int, int]  # (size, mtime_ns): what must stay still for settle_s


@dataclass(frozen=True)
class DropFolderConfig:
    root: Path
    poll_interval_s: float = 1.0
    settle_s: float = 0.5
    max_file_bytes: int = 256 * _MiB
    # MSH-18 empty: the charset to assume, per header (the same policy as the listener).
    default_charset: Callable[[MessageHeader], str] | None = None

    def __post_init__(self) -> None:
        if self.poll_interval_s <= 0 or self.settle_s < 0 or self.max_file_bytes <= 0:
            raise ValueError("poll_interval_s and max_file_bytes must be positive, settle_s >= 0")

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


class _StoreFailed(Exception):
    """The sink raised: transient by assumption (database down), so the file waits."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(_IGNORED_SUFFIXES)


def _display(name: str) -> str:
    # POSIX names are bytes: undecodable ones come back with lone surrogates, which
    # neither the database driver nor the log stream can encode.
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _peer(name: str, number: int | None = None) -> str:
    suffix = "" if number is None else f"#{number}"
    shown = _display(name)
    if len(shown) + len(suffix) > _PEER_MAX:
        shown = shown[: _PEER_MAX - len(suffix) - 1] + "…"
    return shown + suffix


def _read_settled(path: Path, stamp: _Stamp, limit: int) -> bytes | None:
    """The file's bytes, or None when it changed (or vanished) after it was seen settled."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return None
    with f:
        data = f.read(limit + 1)
        st = os.fstat(f.fileno())
    if (st.st_size, st.st_mtime_ns) != stamp or len(data) != stamp[0]:
        return None
    return data


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
        self._seen: dict[str, tuple[_Stamp, float]] = {}  # name -> (stamp, unchanged since)
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
                    extra={"event": "files.scan_failed", "error": type(exc).__name__},
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
            for path, stamp in self._settled_files():
                if stop is not None and stop.is_set():
                    break
                outcome = self._process(path, stamp)
                if outcome is not None:
                    outcomes.append(outcome)
            return outcomes

    def _settled_files(self) -> list[tuple[Path, _Stamp]]:
        now = time.monotonic()
        with os.scandir(self._config.incoming) as it:
            entries = sorted((e for e in it if not _ignored(e.name)), key=lambda e: e.name)
        ready: list[tuple[Path, _Stamp]] = []
        present: set[str] = set()
        for entry in entries:
            try:
                # Symlinks are not followed: a link could point anywhere on this host.
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            present.add(entry.name)
            stamp = (st.st_size, st.st_mtime_ns)
            seen = self._seen.get(entry.name)
            if seen is None or seen[0] != stamp:
                seen = self._seen[entry.name] = (stamp, now)
            if now - seen[1] >= self._config.settle_s:
                ready.append((Path(entry.path), stamp))
        for gone in self._seen.keys() - present:
            del self._seen[gone]
        return ready

    # -- one file --------------------------------------------------------------------

    def _process(self, path: Path, stamp: _Stamp) -> FileOutcome | None:
        name = path.name
        try:
            outcome = self._take(path, stamp)
        except _StoreFailed as exc:
            error = type(exc.__cause__).__name__
            log.error(
                "drop file not stored; retrying next round",
                extra={"event": "files.retry", "file": _display(name), "stage": exc.stage, "error": error},
            )
            return FileOutcome(name, FileStatus.RETRY, reason=f"{exc.stage} failed ({error})")
        except Exception:
            # A bug or a filesystem error costs this round for this file, never the scan.
            log.exception("drop file handling failed", extra={"event": "files.bug", "file": _display(name)})
            return FileOutcome(name, FileStatus.RETRY, reason="unexpected error")
        if outcome is not None:
            self._seen.pop(name, None)
        return outcome

    def _take(self, path: Path, stamp: _Stamp) -> FileOutcome | None:
        name, size, limit = path.name, stamp[0], self._config.max_file_bytes
        received_at = datetime.now(UTC)
        if size > limit:
            reason = f"file is {size} bytes, over the limit of {limit} bytes; not read"
            # Empty raw: the evidence is the file in failed/, the row makes it visible.
            item = Rejected(b"", SOURCE, _peer(name), reason, "oversized", received_at)
            return self._reject_file(path, item)
        data = _read_settled(path, stamp, limit)
        if data is None:
            self._seen.pop(name, None)  # still being written after all: settle again
            return None
        try:
            raws = split_messages(data)
        except IngestError as exc:
            return self._reject_file(
                path, Rejected(data, SOURCE, _peer(name), str(exc), exc.code, received_at)
            )

        good: list[InboundMessage] = []
        bad: list[tuple[int, Rejected]] = []
        for number, raw in enumerate(raws, 1):
            peer = _peer(name, number)
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
            reason = f"{len(bad)} of {len(raws)} messages rejected (the others are stored)"
            lines = [reason, *(f"message {number}: {item.reason} ({item.code})" for number, item in bad)]
            moved = self._move(path, self._config.failed, reason_lines=lines)
        else:
            status, reason = FileStatus.DONE, ""
            moved = self._move(path, self._config.done)
        outcome = FileOutcome(
            name,
            status,
            messages=len(raws),
            committed=new,
            duplicates=len(receipts) - new,
            quarantined=len(bad),
            reason=reason,
            moved_to=moved,
        )
        log.log(
            logging.WARNING if bad else logging.INFO,
            "drop file partly rejected" if bad else "drop file done",
            extra={
                "event": f"files.{status}",
                "file": _display(name),
                "messages": outcome.messages,
                "committed": outcome.committed,
                "duplicates": outcome.duplicates,
                "quarantined": outcome.quarantined,
                "codes": sorted({item.code for _, item in bad}),
            },
        )
        return outcome

    def _reject_file(self, path: Path, item: Rejected) -> FileOutcome:
        """The whole file could not be taken as HL7: quarantine it, then move it aside."""
        self._quarantine(item)
        moved = self._move(
            path, self._config.failed, reason_lines=[f"whole file rejected: {item.reason} ({item.code})"]
        )
        log.warning(
            "drop file rejected",
            extra={"event": "files.rejected", "file": _display(path.name), "code": item.code},
        )
        return FileOutcome(path.name, FileStatus.FAILED, quarantined=1, reason=item.reason, moved_to=moved)

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

    def _move(self, path: Path, folder: Path, *, reason_lines: list[str] | None = None) -> Path:
        target = _free_name(folder, path.name)
        if reason_lines is not None:
            # Written before the move, so a file in failed/ always has its reason beside it.
            reason = target.with_name(target.name + REASON_SUFFIX)
            scratch = reason.with_name(".reason-being-written.tmp")
            scratch.write_text("\n".join([f"file: {_display(path.name)}", *reason_lines]) + "\n", "utf-8")
            os.replace(scratch, reason)
        os.replace(path, target)
        return target


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or a timestamped variant when taken: a move never overwrites.

    Checking then replacing is only safe because this connector is the one writer of
    done/ and failed/ (run one DropFolder per root).
    """
    stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
    tag = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    attempt = 0
    target = folder / _fit(stem, dot + ext)
    while target.exists() or target.with_name(target.name + REASON_SUFFIX).exists():
        attempt += 1
        target = folder / _fit(stem, f".{tag}{'' if attempt == 1 else f'-{attempt}'}{dot}{ext}")
    return target


def _fit(stem: str, tail: str) -> str:
    # A name the filesystem refuses would make the move fail every round, forever; the
    # reason file's longer name must fit too.
    while len(stem) > 1 and len(os.fsencode(stem + tail + REASON_SUFFIX)) > _NAME_MAX:
        stem = stem[:-1]
    return stem + tail
