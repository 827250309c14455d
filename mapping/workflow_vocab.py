"""Vocabulary for orders, documents, appointments and immunizations, after the IG concept maps
(OrderStatus, OrderControlCode[ServiceRequest.status], FillerStatusCodes[Appointment],
CompletionStatus). Entries marked ``# not in the IG`` fill a required FHIR element."""

from __future__ import annotations

from typing import Final

# HL7 table 0038 -> ServiceRequest.status (IG: OrderStatus)
ORDER_STATUS: Final[dict[str, str]] = {
    "CA": "revoked",
    "CM": "completed",
    "DC": "revoked",
    "ER": "entered-in-error",
    "HD": "on-hold",
    "IP": "active",
    "RP": "revoked",
    "SC": "active",
}

# HL7 table 0119 -> ServiceRequest.status when ORC-5 is empty (IG: OrderControlCode[...])
ORDER_CONTROL_STATUS: Final[dict[str, str]] = {
    "AF": "active",
    "CA": "active",
    "CR": "revoked",
    "DC": "revoked",
    "DF": "revoked",
    "DR": "revoked",
    "FU": "completed",
    "HD": "active",
    "HR": "on-hold",
    "NW": "active",
    "OC": "revoked",
    "OD": "revoked",
    "OH": "on-hold",
    "OK": "active",
    "PR": "active",
    "PY": "active",
    "RL": "active",
    "RO": "active",
    "RQ": "active",
}

# HL7 table 0027 -> ServiceRequest.priority (IG: ExtendedPriorityCodes, common codes)
ORDER_PRIORITY: Final[dict[str, str]] = {
    "S": "stat",
    "A": "asap",
    "R": "routine",
    "P": "routine",
    "T": "urgent",
}

# HL7 table 0278 -> Appointment.status (IG: FillerStatusCodes[Appointment]), keyed upper-case
APPOINTMENT_STATUS: Final[dict[str, str]] = {
    "PENDING": "pending",
    "WAITLIST": "waitlist",
    "BOOKED": "booked",
    "STARTED": "checked-in",
    "COMPLETE": "fulfilled",
    "CANCELLED": "cancelled",
    "DELETED": "entered-in-error",
    "NOSHOW": "noshow",
}

# SIU trigger -> Appointment.status when SCH-25 is empty  # not in the IG
APPOINTMENT_EVENT_STATUS: Final[dict[str, str]] = {
    "S12": "booked",
    "S13": "booked",
    "S14": "booked",
    "S15": "cancelled",
    "S16": "cancelled",
    "S17": "entered-in-error",
    "S26": "noshow",
}

# HL7 table 0322 -> Immunization.status (IG: CompletionStatus)
COMPLETION_STATUS: Final[dict[str, str]] = {
    "CP": "completed",
    "RE": "not-done",
    "NA": "not-done",
    "PA": "completed",
}

# HL7 table 0271 -> DocumentReference.docStatus  # not in the IG as a concept map
DOCUMENT_COMPLETION: Final[dict[str, str]] = {
    "AU": "final",
    "LA": "final",
    "DI": "preliminary",
    "DO": "preliminary",
    "IP": "preliminary",
    "IN": "preliminary",
    "PA": "preliminary",
}

# HL7 table 0191/TXA-3 presentation -> MIME type of the text the OBX lines carry
TEXT_PRESENTATION: Final[dict[str, str]] = {"TX": "text/plain", "FT": "text/plain", "HTML": "text/html"}
