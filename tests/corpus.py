"""Test data that lives outside the repository, in ``../shared`` beside it.

The HL7 corpus carries other projects' licences, so it is read in place, never copied in.
``SIDECAR_SHARED_DIR`` points elsewhere. Missing data skips the test on a developer's machine
but fails it in CI (``CI=true``), where a silent skip would hide that nothing was tested.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NoReturn

import pytest

_BATCH_ENVELOPE = ("FHS", "BHS", "BTS", "FTS")


def shared_dir() -> Path:
    override = os.environ.get("SIDECAR_SHARED_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared"


def _missing(what: str) -> NoReturn:
    message = f"{what} not found under {shared_dir()} (set SIDECAR_SHARED_DIR)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def corpus_files(pattern: str = "*.hl7") -> list[Path]:
    """The corpus files matching ``pattern`` (sorted); skip or fail when there are none."""
    folder = shared_dir() / "corpus" / "hl7"
    files = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if not files:
        _missing(f"HL7 corpus files {pattern!r}")
    return files


def shared_file(*parts: str) -> Path:
    """One file under the shared folder (e.g. an IG mapping CSV); skip or fail when missing."""
    path = shared_dir().joinpath(*parts)
    if not path.is_file():
        _missing("/".join(parts))
    return path


def split_messages(text: str) -> list[str]:
    """The messages of a corpus file: batch envelopes dropped, one message per MSH."""
    messages: list[list[str]] = []
    for line in re.split(r"\r\n|\r|\n", text.lstrip("\ufeff")):
        if not line.strip() or line.startswith(_BATCH_ENVELOPE):
            continue
        if line.startswith("MSH") or not messages:
            messages.append([line])
        else:
            messages[-1].append(line)
    return ["\r".join(lines) for lines in messages]


def message_type(message: str) -> str:
    """MSH-9.1 of a message, read with its own delimiters (some corpus files use odd ones)."""
    field_sep, component_sep = message[3], message[4]
    fields = message.split(field_sep)
    return fields[8].split(component_sep)[0] if len(fields) > 8 else ""


def deliberately_malformed() -> set[str]:
    """Corpus file names whose MANIFEST notes say they are broken on purpose."""
    manifest = shared_file("corpus", "hl7", "MANIFEST.tsv")
    names = set()
    for line in manifest.read_text(encoding="utf-8").splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) > 7 and "MALFORMED on purpose" in cols[7]:
            names.add(cols[0])
    return names


def pydicom_shipped_files() -> list[Path]:
    """The files pydicom ships in its wheel, read in place. Not ``get_testdata_files()``: that
    also looks for pydicom's online extras and, without ``requests``, retries their download
    for ~21 s each."""
    import pydicom.data

    root = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(p for p in root.rglob("*") if p.is_file())
