"""The summary's FHIR output, labelled per HL7's AI Transparency on FHIR IG (STU1).

Pure builders, no I/O: the identified zone (sidecar.outputs) calls them with what the
model zone handed back, after checking it, and stores what they return.

- the summary: a DocumentReference with the ``AIAST`` security label and ``docStatus``
  preliminary, authored by the model's Device, its text and its sentence -> fact map;
- the model: a Device (the IG's AI Device profile);
- the prompt exactly as sent: a DocumentReference (the IG's AI Input Prompt profile);
- a Provenance (the IG's AI Provenance profile): reason AIAST, agent the Device, entities
  every input resource version and the prompt.

The IG is written for R4; R4B (what core.fhir validates against) has the same elements here.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = [
    "AIAST",
    "SUMMARY_TYPES",
    "device_id",
    "model_device",
    "prompt_document",
    "prompt_document_id",
    "provenance",
    "summary_document",
    "summary_document_id",
    "summary_text",
]

IG = "http://hl7.org/fhir/uv/aitransparency"
AI_DEVICE_PROFILE = f"{IG}/StructureDefinition/AI-Device"
AI_INPUT_PROMPT_PROFILE = f"{IG}/StructureDefinition/AI-InputPrompt"
AI_PROVENANCE_PROFILE = f"{IG}/StructureDefinition/AI-Provenance"
AI_KIND_EXTENSION = f"{IG}/StructureDefinition/aitransparency.AIKind"
AI_DEVICE_TYPES = f"{IG}/CodeSystem/AIdeviceTypeCS"
AI_INPUTS = f"{IG}/CodeSystem/AIinputsCS"

AIAST: Mapping[str, str] = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
# The AI Device profile fixes Device.type to this code, and the AI Provenance profile
# fixes the AI agent's role to it.
ARTIFICIAL_INTELLIGENCE = {
    "system": AI_DEVICE_TYPES,
    "code": "Artificial-Intelligence",
    "display": "All kinds of Artificial Intelligence",
}
LARGE_LANGUAGE_MODEL = {
    "system": AI_DEVICE_TYPES,
    "code": "Large-Language-Models",
    "display": "Large Language Models",
}
INPUT_PROMPT = {"system": AI_INPUTS, "code": "AIInputPrompt", "display": "AI Input Prompt"}
PARTICIPANT_TYPES = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
WEIGHTS_DIGEST_SYSTEM = "urn:hl7-fhir-sidecar:model-weights-digest"
TEMPLATE_POLICY = "urn:hl7-fhir-sidecar:template:"

# LOINC document types, one per summary kind.
SUMMARY_TYPES: Mapping[str, Mapping[str, str]] = {
    "discharge": {"system": "http://loinc.org", "code": "18842-5", "display": "Discharge summary"},
    "lab-report": {"system": "http://loinc.org", "code": "11502-2", "display": "Laboratory report"},
    "imaging-report": {
        "system": "http://loinc.org",
        "code": "18748-4",
        "display": "Diagnostic imaging study",
    },
    "digest": {"system": "http://loinc.org", "code": "60591-5", "display": "Patient summary Document"},
}


def _hash_id(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _meta(labels: Sequence[Mapping[str, str]], profile: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"security": [dict(label) for label in labels]}
    if profile:
        meta["profile"] = [profile]
    return meta


def summary_document_id(patient: str, kind: str) -> str:
    # One living document per patient and kind: a new summary is a new version of it.
    return _hash_id("summary", kind, patient)


def prompt_document_id(job_id: int, attempt: int) -> str:
    # Per job attempt: a retried job keeps the prompt its earlier attempt sent.
    return _hash_id("prompt", str(job_id), str(attempt))


def device_id(name: str, served: str, version: str, model_version: str | None, digest: str | None) -> str:
    # The same model configuration is the same Device, however many summaries it writes.
    return _hash_id("device", name, served, version, model_version or "", digest or "")


def summary_text(sentences: Sequence[Mapping[str, Any]], language: str) -> str:
    # Chinese sentences end in their own full stop and are not separated by spaces.
    return ("" if language == "zh" else " ").join(str(s["text"]).strip() for s in sentences)


def model_device(
    *,
    name: str,
    served: str,
    version: str,
    model_version: str | None,
    weights_digest: str | None,
    large_language_model: bool,
    labels: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """The AI Device: ``name`` as configured, ``served`` as the server named the model,
    ``version`` the sidecar's model client, ``model_version`` and ``weights_digest`` the
    operator's configuration. The IG names no element for a weights digest; it is an
    identifier here, as it identifies exactly which weights wrote a summary."""
    device: dict[str, Any] = {
        "resourceType": "Device",
        "id": device_id(name, served, version, model_version, weights_digest),
        "meta": _meta(labels, AI_DEVICE_PROFILE),
        "status": "active",
        "type": {"coding": [dict(ARTIFICIAL_INTELLIGENCE)]},
        "deviceName": [
            {"name": name, "type": "user-friendly-name"},
            {"name": served, "type": "model-name"},
        ],
        "version": [{"type": {"text": "sidecar model client"}, "value": version}],
    }
    if large_language_model:
        device["extension"] = [
            {"url": AI_KIND_EXTENSION, "valueCodeableConcept": {"coding": [dict(LARGE_LANGUAGE_MODEL)]}}
        ]
    if model_version:
        device["version"].insert(0, {"type": {"text": "model"}, "value": model_version})
    if weights_digest:
        device["identifier"] = [{"system": WEIGHTS_DIGEST_SYSTEM, "value": weights_digest}]
    return device


def prompt_document(
    patient: str, document_id: str, prompt: str, *, labels: Sequence[Mapping[str, str]], now: datetime
) -> dict[str, Any]:
    """The AI Input Prompt: exactly what was sent to the model, as text."""
    return {
        "resourceType": "DocumentReference",
        "id": document_id,
        "meta": _meta(labels, AI_INPUT_PROMPT_PROFILE),
        "status": "current",
        "type": {"coding": [dict(INPUT_PROMPT)]},
        "subject": {"reference": f"Patient/{patient}"},
        "date": now.isoformat(),
        "description": "The prompt sent to the summary model",
        "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": _b64(prompt)}}],
    }


def summary_document(
    patient: str,
    kind: str,
    sentences: Sequence[Mapping[str, Any]],
    *,
    language: str,
    template: str,
    verifier: str,
    author: str,
    labels: Sequence[Mapping[str, str]],
    now: datetime,
) -> dict[str, Any]:
    """The summary: AIAST-labelled and preliminary (no clinician has signed it). Its
    second attachment maps every sentence to the resource versions it cites, so a reader
    can trace each one to the record. ``author``: the Device's reference."""
    sentence_map = {
        "template": template,
        "language": language,
        "verifier": verifier,
        "sentences": [{"text": s["text"], "facts": list(s["facts"])} for s in sentences],
    }
    title = f"{kind} summary"
    return {
        "resourceType": "DocumentReference",
        "id": summary_document_id(patient, kind),
        "meta": _meta([AIAST, *(label for label in labels if label["code"] != AIAST["code"])]),
        "status": "current",
        "docStatus": "preliminary",
        "type": {"coding": [dict(SUMMARY_TYPES[kind])], "text": f"Machine-generated {title}"},
        "subject": {"reference": f"Patient/{patient}"},
        "date": now.isoformat(),
        "author": [{"reference": author}],
        "description": title,
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "language": language,
                    "data": _b64(summary_text(sentences, language)),
                    "title": title,
                }
            },
            {
                "attachment": {
                    "contentType": "application/json",
                    "data": _b64(json.dumps(sentence_map, ensure_ascii=False, sort_keys=True)),
                    "title": "sentence to fact map",
                }
            },
        ],
    }


def provenance(
    target: str,
    inputs: Sequence[str],
    *,
    prompt: str,
    device: str,
    template: str,
    verifier: str,
    labels: Sequence[Mapping[str, str]],
    now: datetime,
) -> dict[str, Any]:
    """The AI Provenance of one summary version (``target``, versioned): the Device as
    its author, the deterministic verifier (display only: it is code, not a resource),
    every input version as a source, the prompt's version as the IG's derivation entity."""
    return {
        "resourceType": "Provenance",
        "id": _hash_id("provenance", target),
        "meta": _meta(labels, AI_PROVENANCE_PROFILE),
        "target": [{"reference": target}],
        "recorded": now.isoformat(),
        "policy": [TEMPLATE_POLICY + template],
        "reason": [{"coding": [dict(AIAST)]}],
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
                "type": {"coding": [{"system": PARTICIPANT_TYPES, "code": "author", "display": "Author"}]},
                "role": [{"coding": [dict(ARTIFICIAL_INTELLIGENCE)]}],
                "who": {"reference": device},
            },
            {
                "type": {
                    "coding": [{"system": PARTICIPANT_TYPES, "code": "verifier", "display": "Verifier"}]
                },
                "who": {"display": verifier},
            },
        ],
        "entity": [
            *({"role": "source", "what": {"reference": ref}} for ref in inputs),
            {"role": "derivation", "what": {"reference": prompt}},
        ],
    }
