"""The summary's FHIR output: a DocumentReference with the text, and a Provenance naming
the model, the prompt version and every input resource version."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import Any

SUMMARY_LOINC = {"system": "http://loinc.org", "code": "60591-5", "display": "Patient summary Document"}


def summary_document_id(patient: str, kind: str) -> str:
    # One living document per patient and kind: a new summary is a new version of it.
    return hashlib.sha256(f"summary|{kind}|{patient}".encode()).hexdigest()[:32]


def document_reference(patient: str, kind: str, text: str, *, now: datetime) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": summary_document_id(patient, kind),
        "status": "current",
        "docStatus": "preliminary",  # machine-written: a clinician has not signed it
        "type": {"coding": [SUMMARY_LOINC], "text": f"Machine-generated {kind} summary"},
        "subject": {"reference": f"Patient/{patient}"},
        "date": now.isoformat(),
        "description": f"{kind} summary",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "language": "en",
                    "data": base64.b64encode(text.encode()).decode(),
                    "title": f"{kind} summary",
                }
            }
        ],
    }


def provenance(
    document: dict[str, Any], inputs: list[str], *, model: str, prompt_version: str, now: datetime
) -> dict[str, Any]:
    target = f"DocumentReference/{document['id']}/_history/{document['meta']['versionId']}"
    return {
        "resourceType": "Provenance",
        "id": hashlib.sha256(f"provenance|{target}".encode()).hexdigest()[:32],
        "target": [{"reference": target}],
        "recorded": now.isoformat(),
        "policy": [f"urn:hl7-fhir-sidecar:prompt:{prompt_version}"],
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "CREATE",
                    "display": "create",
                }
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "assembler",
                        }
                    ]
                },
                "who": {"display": model},
            }
        ],
        "entity": [{"role": "source", "what": {"reference": ref}} for ref in inputs],
    }
