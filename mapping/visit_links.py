"""What a PV1 says beyond its Encounter, as the IG's other PV1 maps put it.

* PV1-20 financial class -> a Coverage of the patient per repetition (IG PV1[Coverage]). The
  PV1 names no payer, and FHIR requires Coverage.payor: it is a Reference saying the payer is
  unknown (``ABSENT_PAYOR``); an IN1 in the same message gives the payer its own Coverage.
* PV1-43 prior temporary location -> a Basic standing for R5's EncounterHistory (IG
  PV1[Basic-EncounterHistory]): where the patient was, classified temporary, completed. The
  IG puts a status inside the valued location extension, which FHIR forbids (ext-1): the
  history's status is an extension of its own.
* PV1-53/54 service episode -> the EpisodeOfCare the Encounter belongs to (IG PV1[Encounter]
  episodeOfCare(EpisodeOfCare)): PV1-54 its identifier (and its id, so every visit of the same
  episode names one EpisodeOfCare), PV1-53 its description.
"""

from __future__ import annotations

import copy
from typing import Final

from mapping import ids
from mapping.context import Context, PatientRef
from mapping.hl7.datatypes import Json, authority, cwe_concept, cx_identifier, resource
from mapping.hl7.parse import Segment
from mapping.location import pl_location, subcomposite
from mapping.visit import LOCATION_CLASSIFICATION

__all__ = [
    "ABSENT_PAYOR",
    "DESCRIPTION_EXTENSION",
    "ENCOUNTER_HISTORY",
    "HISTORY_ENCOUNTER_EXTENSION",
    "HISTORY_LOCATION_EXTENSION",
    "HISTORY_STATUS_EXTENSION",
    "map_pv1_links",
]

DATA_ABSENT_EXTENSION: Final = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
ABSENT_PAYOR: Final[Json] = {"extension": [{"url": DATA_ABSENT_EXTENSION, "valueCode": "unknown"}]}
"""Coverage.payor when the message names no payer (FHIR: 1..*)."""
DESCRIPTION_EXTENSION: Final = "http://hl7.org/fhir/StructureDefinition/resource-instance-description"
ENCOUNTER_HISTORY: Final[Json] = {
    "coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "EncounterHistory"}]
}
_R5: Final = "http://hl7.org/fhir/5.0/StructureDefinition/extension-EncounterHistory"
HISTORY_ENCOUNTER_EXTENSION: Final = f"{_R5}.encounter"
HISTORY_LOCATION_EXTENSION: Final = f"{_R5}.location"
HISTORY_STATUS_EXTENSION: Final = f"{_R5}.status"

# An episode spans visits: a visit that ended does not end it. Only a planned or erroneous visit
# says something of the episode's status; otherwise it is under way.
_EPISODE_STATUS: Final = {"planned": "planned", "entered-in-error": "entered-in-error"}


def _financial_classes(pv1: Segment, patient: PatientRef, encounter_id: str, ctx: Context) -> None:
    for number, fc in enumerate(pv1.repetitions(20), start=1):
        # FC.1 is a code (IS) up to v2.6 and a CWE since v2.7: its subcomponents read as a CWE.
        kind = cwe_concept(subcomposite(fc, 1))
        if kind is None:
            continue
        coverage_id = ids.resource_id("Coverage", encounter_id, "pv1-20", str(number))
        ctx.add(
            resource(
                "Coverage",
                coverage_id,
                {
                    "status": "active",
                    "type": kind,
                    "beneficiary": patient.subject,
                    "payor": [copy.deepcopy(ABSENT_PAYOR)],
                },
            )
        )


def _prior_temporary_location(pv1: Segment, patient: PatientRef, encounter_id: str, ctx: Context) -> None:
    place = pl_location(pv1.first(43), ctx)
    if place is None:
        return
    temporary = {
        "url": LOCATION_CLASSIFICATION,
        "valueCodeableConcept": {
            "coding": [{"system": "http://hl7.org/fhir/ValueSet/subject-location", "code": "temporary"}]
        },
    }
    # The IG's order: the place, its classification, then what R5 requires (status) and the visit.
    extensions = [
        {"url": f"{HISTORY_LOCATION_EXTENSION}.location", "valueReference": place},
        {"url": HISTORY_LOCATION_EXTENSION, "extension": [temporary]},
        {"url": HISTORY_STATUS_EXTENSION, "valueCode": "completed"},
        {"url": HISTORY_ENCOUNTER_EXTENSION, "valueReference": ids.reference("Encounter", encounter_id)},
    ]
    history_id = ids.resource_id("Basic", encounter_id, "pv1-43")
    ctx.add(
        resource(
            "Basic",
            history_id,
            {"extension": extensions, "code": copy.deepcopy(ENCOUNTER_HISTORY), "subject": patient.subject},
        )
    )


def _episode(pv1: Segment, patient: PatientRef, encounter: Json, ctx: Context) -> Json | None:
    description = " ".join(pv1.text(53).split())
    episode = pv1.first(54)
    identifier = cx_identifier(episode, ctx.zone)
    if not description and identifier is None:
        return None
    key = (patient.key.authority, patient.key.value)
    if identifier is not None:
        episode_id = ids.resource_id("EpisodeOfCare", *key, "episode", authority(episode), episode.get(1))
    else:
        episode_id = ids.resource_id("EpisodeOfCare", encounter["id"], "pv1-53")
    if not ctx.taken("EpisodeOfCare", episode_id):
        ctx.add(
            resource(
                "EpisodeOfCare",
                episode_id,
                {
                    "extension": [{"url": DESCRIPTION_EXTENSION, "valueString": description}]
                    if description
                    else None,
                    "identifier": [identifier] if identifier else None,
                    "status": _EPISODE_STATUS.get(encounter.get("status", ""), "active"),
                    "patient": patient.subject,
                },
            )
        )
    return ids.reference("EpisodeOfCare", episode_id)


def map_pv1_links(pv1: Segment, patient: PatientRef, encounter: Json, ctx: Context) -> None:
    """Add the Coverage (PV1-20), EncounterHistory (PV1-43) and EpisodeOfCare (PV1-53/54) of a
    PV1 whose Encounter is ``encounter``, which gets the episode's reference."""
    _financial_classes(pv1, patient, encounter["id"], ctx)
    _prior_temporary_location(pv1, patient, encounter["id"], ctx)
    episode = _episode(pv1, patient, encounter, ctx)
    if episode is not None:
        encounter["episodeOfCare"] = [episode]
