"""The model's context: a patient's de-identified resources, and nothing else.

Reads only the de-identified store (``resources``, the columns core.zones allows).
Earlier summaries are left out so a summary never feeds on its own text.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.model_tables import Resource

__all__ = ["CLINICAL_TYPES", "patient_context"]

CLINICAL_TYPES = ("Patient", "Encounter", "Condition", "Observation", "DiagnosticReport", "ImagingStudy")


def patient_context(session: Session, patient: str) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Resource.body)
        .where(Resource.patient == patient, Resource.resource_type.in_(CLINICAL_TYPES))
        .order_by(Resource.resource_type, Resource.resource_id)
    ).scalars()
    return [json.loads(body) for body in rows]
