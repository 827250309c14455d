"""The pipeline's options for DICOM instances, apart from the pipeline: `sidecar convert` of
HL7 files builds them without loading what the pipeline imports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DicomPipelineOptions"]


@dataclass(frozen=True)
class DicomPipelineOptions:
    object_dir: Path | None = None  # de-identified .dcm files go here; None: not kept
    authority: str = ""  # assigning authority of PatientID when IssuerOfPatientID is empty
    allow_burned_in: bool = False  # site rule: release images that may carry burned-in text
