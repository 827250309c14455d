"""DICOM de-identification (PS3.15 Basic Application Confidentiality Profile with options)."""

from __future__ import annotations

from .deidentify import DicomDeidResult, DicomOptions, burned_in_risk, deidentify_dataset

__all__ = ["DicomDeidResult", "DicomOptions", "burned_in_risk", "deidentify_dataset"]
