"""Audit entries as FHIR R4 AuditEvents shaped by IHE Basic Audit Log Patterns (BALP):
reads as PatientRead, searches and $everything as PatientQuery (one AuditEvent per patient),
re-identification, de-identification, disclosure and AI output as ISO 21089 lifecycle events.

The same rendering feeds ``GET /fhir/AuditEvent`` and the syslog forwarder, so a SIEM and a
FHIR client see one record. Pure functions of an entry: nothing here reads the database.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from audit.log import PATIENTS, PURPOSE, SOURCE, PendingEntry

__all__ = ["OBSERVER", "EntryView", "actions_of", "auditevent", "balp_kind"]

OBSERVER = "hl7-fhir-sidecar"
_BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_PURPOSE = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_REST = {"system": _EVENT_TYPE, "code": "rest", "display": "Restful Operation"}
_PATIENT_RECORD = {"system": _DCM, "code": "110110", "display": "Patient Record"}
_EXPORT = {"system": _DCM, "code": "110106", "display": "Export"}
_APPLICATION = {"system": _DCM, "code": "110100", "display": "Application Activity"}


@dataclass(frozen=True)
class EntryView(PendingEntry):
    """One audit log entry, as stored (``detail`` parsed), with its place in the chain."""

    seq: int

    @property
    def patients(self) -> list[str]:
        return list(self.detail.get(PATIENTS, []))


@dataclass(frozen=True)
class _Kind:
    profile: str | None
    type: dict[str, str]
    subtype: dict[str, str]
    action: str  # C R U D E


def _lifecycle(code: str) -> dict[str, str]:
    return {"system": _LIFECYCLE, "code": code}


def _rest(code: str) -> dict[str, str]:
    return {"system": _INTERACTION, "code": code}


# Our actions by BALP pattern; anything not listed is application activity.
_KINDS: dict[str, _Kind] = {
    "fhir.read": _Kind("IHE.BasicAudit.PatientRead", _REST, _rest("read"), "R"),
    "fhir.vread": _Kind("IHE.BasicAudit.PatientRead", _REST, _rest("vread"), "R"),
    "fhir.search": _Kind("IHE.BasicAudit.PatientQuery", _REST, _rest("search-type"), "E"),
    "fhir.everything": _Kind("IHE.BasicAudit.PatientQuery", _REST, _rest("operation"), "E"),
    "patient.reidentified": _Kind(None, _PATIENT_RECORD, _lifecycle("reidentify"), "E"),
    "patient.reid_refused": _Kind(None, _PATIENT_RECORD, _lifecycle("reidentify"), "E"),
    "messages.processed": _Kind(None, _PATIENT_RECORD, _lifecycle("deidentify"), "C"),
    "events.published": _Kind(None, _EXPORT, _lifecycle("disclose"), "E"),
    "fhir.export.complete": _Kind(None, _EXPORT, _lifecycle("disclose"), "E"),
    "summary.completed": _Kind(None, _PATIENT_RECORD, _lifecycle("originate"), "C"),
    "context.read": _Kind(None, _PATIENT_RECORD, _lifecycle("access"), "R"),  # the model zone reads
    "fhir.export.download": _Kind(None, _EXPORT, _lifecycle("disclose"), "E"),
}
_OTHER = _Kind(None, _APPLICATION, _lifecycle("access"), "E")


def balp_kind(action: str) -> str:
    """How an action is shown: its BALP profile or ISO 21089 lifecycle event."""
    kind = _KINDS.get(action, _OTHER)
    return kind.profile.removeprefix("IHE.BasicAudit.") if kind.profile else kind.subtype["code"]


def actions_of(
    *, action: str | None = None, subtype: str | None = None
) -> tuple[list[str] | None, list[str]]:
    """Our action names an AuditEvent search's ``action`` (C, R, U, D, E) and ``subtype``
    (a restful interaction or ISO 21089 code) select: (those to include, None for any; those
    to leave out). Actions we do not classify are E, "access"."""

    def matches(kind: _Kind) -> bool:
        return (action is None or kind.action == action) and (
            subtype is None or kind.subtype["code"] == subtype
        )

    if matches(_OTHER):
        return None, [name for name, kind in _KINDS.items() if not matches(kind)]
    return [name for name, kind in _KINDS.items() if matches(kind)], []


def auditevent(entry: EntryView, *, patient: str | None = None) -> dict[str, Any]:
    """The AuditEvent of ``entry``; with ``patient``, the one about that patient alone (BALP:
    one AuditEvent per patient of a query), with an id of its own."""
    kind = _KINDS.get(entry.action, _OTHER)
    patients = [patient] if patient is not None else entry.patients
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": _event_id(entry, patient),
        "type": kind.type,
        "subtype": [kind.subtype],
        "action": kind.action,
        "recorded": entry.at,
        "outcome": "0" if entry.outcome == "success" else "4",
        "agent": _agents(entry),
        "source": {
            "site": OBSERVER,
            "observer": {"display": OBSERVER},
            "type": [{"system": _SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
        "entity": _entities(entry, patients),
    }
    if kind.profile:
        event["meta"] = {"profile": [_BALP + kind.profile]}
    if entry.outcome != "success":
        event["outcomeDesc"] = _outcome_text(entry.detail)
    return event


def _event_id(entry: EntryView, patient: str | None) -> str:
    if patient is None or len(entry.patients) <= 1:
        return str(entry.seq)
    return f"{entry.seq}-{entry.patients.index(patient) + 1}" if patient in entry.patients else str(entry.seq)


def _agents(entry: EntryView) -> list[dict[str, Any]]:
    """The client (requestor, with purpose and address) and this server."""
    client: dict[str, Any] = {
        "type": {"coding": [{"system": _PARTICIPATION, "code": "IRCP", "display": "information recipient"}]},
        "who": {"identifier": {"system": f"urn:{OBSERVER}:actor", "value": entry.actor}},
        "name": entry.actor,
        "requestor": True,
    }
    if purpose := entry.detail.get(PURPOSE):
        client["purposeOfUse"] = [{"coding": [{"system": _PURPOSE, "code": purpose}]}]
    if source := entry.detail.get(SOURCE):
        client["network"] = {"address": source, "type": "2" if source[:1].isdigit() or ":" in source else "1"}
    server = {
        "type": {"coding": [{"system": _DCM, "code": "110153", "display": "Source Role ID"}]},
        "who": {"display": OBSERVER},
        "requestor": False,
    }
    agents = [client, server]
    if entry.action == "summary.completed" and isinstance(entry.detail.get("device"), str):
        agents.append(
            {
                "type": {"coding": [{"system": _DCM, "code": "110150", "display": "Application"}]},
                "who": {"reference": entry.detail["device"].split("/_history/")[0]},
                "name": str(entry.detail.get("model") or "model"),
                "requestor": False,
            }
        )
    return agents


def _entities(entry: EntryView, patients: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "what": {"reference": f"Patient/{p}"},
            "type": {"system": _ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": _ROLE, "code": "1", "display": "Patient"},
        }
        for p in patients
    ]
    if "?" in entry.entity or entry.action == "fhir.everything":
        query = base64.b64encode(entry.entity.encode()).decode()
        out.append(
            {
                "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": _ROLE, "code": "24", "display": "Query"},
                "query": query,
                "detail": _details(entry.detail),
            }
        )
    else:
        thing: dict[str, Any] = {
            "what": {"display": entry.entity},
            "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
            "detail": _details(entry.detail),
        }
        if entry.entity.count("/") in (1, 3) and entry.entity[:1].isupper() and ":" not in entry.entity:
            thing["what"] = {"reference": entry.entity}
            thing["role"] = {"system": _ROLE, "code": "4", "display": "Domain Resource"}
        out.append(thing)
    return out


def _details(detail: dict[str, Any]) -> list[dict[str, str]]:
    """The entry's own detail (codes, counts, our ids), each key as a string value."""
    rest = {k: v for k, v in detail.items() if k not in (PATIENTS, PURPOSE, SOURCE)}
    return [
        {"type": key, "valueString": v if isinstance(v, str) else json.dumps(v, sort_keys=True)}
        for key, v in sorted(rest.items())
    ]


def _outcome_text(detail: dict[str, Any]) -> str:
    for key in ("refused", "reason", "status", "kinds", "error_type"):
        if key in detail:
            return f"{key}: {detail[key]}"
    return "failure"
