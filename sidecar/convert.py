"""`sidecar convert`: HL7 v2 files → FHIR transaction Bundles, offline, for integration teams.

A DICOM file (``.dcm``, or any file with the Part-10 "DICM" prefix) becomes an ImagingStudy
transaction Bundle (with the Patient stub it references); with ``--deid`` also its
de-identified copy ``<out>/<de-identified SOP Instance UID>.dcm``, keyed by the same
pseudonym as the Bundle (the pipeline's own ``deidentify_instance``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connectors.hl7 import decode_message, peek_header, split_messages
from core.errors import IngestError, SidecarError
from core.fhir import FhirValidationError, transaction_bundle
from mapping import MappingOptions, map_message, report_lines
from mapping.model import MappedMessage, SegmentUse
from worker.objects import write_atomic
from worker.options import DicomPipelineOptions

if TYPE_CHECKING:
    from deid import Vault
    from mapping.breadth import Breadth

# DICOM (pydicom, the pipeline's de-identification of an instance) and de-identification are
# imported where a file needs them: converting one HL7 message stays quick (bench/cli_startup.py).

_DICM_OFFSET = 128  # Part-10: a 128-byte preamble, then "DICM"


@dataclass(frozen=True)
class Converted:
    path: Path
    index: int  # 1-based message number within the file
    count: int  # messages in the file
    bundle: dict[str, Any]
    report: list[str]  # what no rule mapped (segment and field names, never values)
    objects: tuple[tuple[str, bytes], ...] = ()  # (file name, bytes): de-identified .dcm files
    usage: tuple[SegmentUse, ...] = ()  # what the rules did per segment, for the breadth report


@dataclass(frozen=True)
class ConvertFailure:
    path: Path
    reason: str


def is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as f:
            return f.read(_DICM_OFFSET + 4)[_DICM_OFFSET:] == b"DICM"
    except OSError:
        return False  # the HL7 path reports why it cannot be read


def convert_dicom(
    path: Path, options: MappingOptions, vault: Vault | None, dicom: DicomPipelineOptions
) -> Converted | ConvertFailure:
    import pydicom

    from mapping.dicom import map_dataset
    from worker.pipeline import PermanentFailure, deidentify_instance

    try:
        ds = pydicom.dcmread(path)
    except OSError as exc:
        return ConvertFailure(path, exc.strerror or type(exc).__name__)
    except Exception as exc:
        # pydicom's messages can quote values: the exception type only.
        return ConvertFailure(path, f"not a readable DICOM file ({type(exc).__name__})")
    try:
        if vault is None:
            mapped = map_dataset(ds, authority=dicom.authority, default_timezone=options.default_timezone)
            return Converted(path, 1, 1, transaction_bundle(mapped.resources), [])
        done = deidentify_instance(ds, vault, dicom, options.default_timezone)
        resources = [r.resource for r in done.result.resources]
        name = f"{done.obj.sop_uid}.dcm"
        return Converted(path, 1, 1, transaction_bundle(resources), [], objects=((name, done.obj.data),))
    except PermanentFailure as exc:
        return ConvertFailure(path, f"{exc.stage}: {exc.reason}")
    except (SidecarError, FhirValidationError) as exc:
        return ConvertFailure(path, str(exc))


def convert_file(
    path: Path,
    options: MappingOptions,
    vault: Vault | None,
    dicom: DicomPipelineOptions | None = None,
) -> Iterator[Converted | ConvertFailure]:
    if is_dicom_file(path):
        yield convert_dicom(path, options, vault, dicom or DicomPipelineOptions())
        return
    try:
        messages = split_messages(path.read_bytes())
    except OSError as exc:
        yield ConvertFailure(path, exc.strerror or type(exc).__name__)
        return
    except IngestError as exc:
        yield ConvertFailure(path, str(exc))
        return
    for index, raw in enumerate(messages, start=1):
        where = f"message {index}: " if len(messages) > 1 else ""
        try:
            bundle, mapped = _bundle(raw, options, vault)
            yield Converted(path, index, len(messages), bundle, report_lines(mapped), usage=mapped.usage)
        except (SidecarError, FhirValidationError) as exc:
            yield ConvertFailure(path, f"{where}{exc}")


def _bundle(raw: bytes, options: MappingOptions, vault: Vault | None) -> tuple[dict[str, Any], MappedMessage]:
    try:
        declared = peek_header(raw).charset
    except IngestError:
        declared = ""  # mapping reports what is wrong with the header, more precisely
    mapped = map_message(decode_message(raw, declared).text, options)
    resources = mapped.resources
    if vault is not None:
        from deid import deidentify

        keys = {pid: (key.authority, key.value) for pid, key in mapped.patient_keys.items()}
        resources = [r.resource for r in deidentify(resources, keys, mapped.phi_values, vault).resources]
    return transaction_bundle(resources), mapped


def expand_paths(paths: list[Path]) -> list[tuple[Path, str]]:
    """Each file with the stem of its output; a folder gives every file under it (hidden ones
    left out, sorted), each named by its path below the folder so two ``msg.hl7`` never collide."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if not path.is_dir():
            found.append((path, path.stem))
            continue
        for child in sorted(path.rglob("*")):
            relative = child.relative_to(path)
            if child.is_file() and not any(part.startswith(".") for part in relative.parts):
                found.append((child, "__".join(relative.with_suffix("").parts)))
    return found


def write_outputs(
    paths: list[Path],
    options: MappingOptions,
    vault: Vault | None,
    out_dir: Path | None,
    emit: Callable[[str], None],
    report_error: Callable[[str], None],
    report_unmapped: Callable[[str], None] | None = None,
    dicom: DicomPipelineOptions | None = None,
    breadth: Breadth | None = None,
) -> int:
    """Convert every file (a folder: every file under it); returns the number of files with at
    least one failure. ``breadth``, if given, tallies every converted HL7 message."""
    failed_files = 0
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    for path, stem in expand_paths(paths):
        failed = False
        for result in convert_file(path, options, vault, dicom):
            if isinstance(result, ConvertFailure):
                report_error(f"{result.path}: {result.reason}")
                failed = True
                if breadth is not None:
                    breadth.add_failure()
                continue
            if breadth is not None and result.usage:
                breadth.add_usage(result.usage)
            if result.objects and out_dir is None:
                report_error(f"{result.path}: the de-identified .dcm needs --out DIR")
                failed = True
                continue
            for name, data in result.objects:
                assert out_dir is not None
                write_atomic(out_dir / name, data)
            if report_unmapped is not None:
                where = f"{result.path}" + (f" message {result.index}" if result.count > 1 else "")
                for line in result.report:
                    report_unmapped(f"{where}: {line}")
            text = json.dumps(result.bundle, ensure_ascii=False)
            if out_dir is None:
                emit(text)
            else:
                suffix = f"-{result.index}" if result.count > 1 else ""
                (out_dir / f"{stem}{suffix}.json").write_text(text + "\n", encoding="utf-8")
        failed_files += failed
    return failed_files
