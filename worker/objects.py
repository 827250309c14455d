"""The de-identified DICOM object store: a directory of Part-10 files.

Layout ``<root>/<study UID>/<SOP instance UID>.dcm`` with the de-identified (keyed 2.25)
UIDs, so a file name says nothing about the source and the same instance always lands on
the same path. Writes are atomic (temporary file, fsync, rename, fsync of the directory)
and idempotent: rewriting identical bytes is skipped, so reprocessing or replaying an
inbox entry leaves the store as it was.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

_SAFE_UID = re.compile(r"[0-9.]{1,64}")


@dataclass(frozen=True)
class DeidObject:
    study_uid: str  # de-identified
    sop_uid: str  # de-identified
    data: bytes  # Part-10 file

    def __post_init__(self) -> None:
        if not (_SAFE_UID.fullmatch(self.study_uid) and _SAFE_UID.fullmatch(self.sop_uid)):
            raise ValueError("object UIDs must be DICOM UIDs")
        if self.sop_uid.strip(".") == "" or self.study_uid.strip(".") == "":
            raise ValueError("object UIDs must be DICOM UIDs")

    @property
    def relative_path(self) -> Path:
        return Path(self.study_uid) / f"{self.sop_uid}.dcm"

    def __repr__(self) -> str:
        return f"DeidObject({self.relative_path}, {len(self.data)} bytes)"


def write_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically; False (nothing written) if it already holds it."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True


def put_object(root: Path, obj: DeidObject) -> Path:
    path = root / obj.relative_path
    write_atomic(path, obj.data)
    return path
