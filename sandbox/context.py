"""The model's context: a patient's de-identified resources, and nothing else.

Reads only the de-identified store. Earlier summaries are left out so a summary never
feeds on its own text.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from core.store import resources_of_patient

CLINICAL_TYPES = ("Patient", "Encounter", "Condition", "Observation", "DiagnosticReport", "ImagingStudy")


def patient_context(session: Session, patient: str) -> list[dict[str, Any]]:
    return [r for r in resources_of_patient(session, patient) if r["resourceType"] in CLINICAL_TYPES]


def version_reference(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}/_history/{resource['meta']['versionId']}"
