"""De-identification: identified FHIR resources of one message -> resources safe to store and publish.

Everything downstream (event subscribers, the LLM sandbox) sees only what ``deidentify``
returns. It keeps allow-listed elements only (``policy``), replaces ids and patient
identifiers by keyed pseudonyms (``vault``), shifts dates per patient (``dates``),
scrubs free text (``scrub``) and refuses to return anything in which a reported
identifier survives (``leak``).
"""

from __future__ import annotations

from .deidentify import DeidentifiedResource, DeidResult, deidentify
from .dicom import DicomDeidResult, DicomOptions, deidentify_dataset
from .leak import check_no_leak
from .secret import load_or_create_secret
from .vault import Vault

__all__ = [
    "DeidResult",
    "DeidentifiedResource",
    "DicomDeidResult",
    "DicomOptions",
    "Vault",
    "check_no_leak",
    "deidentify",
    "deidentify_dataset",
    "load_or_create_secret",
]
