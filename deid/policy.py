"""What survives de-identification, as data.

Everything here is an allow-list: an element that is not named for its resource type
(or for the datatype it lives in) is dropped, and a resource type that has no entry in
``RESOURCES`` is refused. Adding a resource type or an element is a data change here;
the walker in ``deidentify.py`` does not need to know about it. A later declarative
policy file is meant to load into these same shapes.

Element types are FHIR datatype names. Primitives fall into four treatments:

* ``KEEP_PRIMITIVES``: kept verbatim (codes, numbers, URIs; they carry no free text),
* ``TEXT_PRIMITIVES``: free text, scrubbed,
* ``DATE_PRIMITIVES``: shifted by the patient's offset,
* ``"Reference"``: rewritten to the pseudonymised id, or dropped.

Every other type name must be a key of ``COMPLEX`` (a datatype or a backbone element,
the latter named ``Resource.element``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True)
class Element:
    type: str
    many: bool = False


def one(type_name: str) -> Element:
    return Element(type_name)


def many(type_name: str) -> Element:
    return Element(type_name, many=True)


# ---- kinds of identifying values the mapper reports, and what replaces them in text ----

PHI_KINDS: Final = frozenset({"NAME", "ID", "DATE", "PHONE", "ADDRESS", "EMAIL"})

# DATE has no placeholder on purpose: a date in text is replaced by its shifted form so
# that intervals stay readable; "[DATE]" is only the fallback when no shift is possible.
PLACEHOLDERS: Final = MappingProxyType(
    {
        "NAME": "[NAME]",
        "ID": "[ID]",
        "PHONE": "[PHONE]",
        "ADDRESS": "[ADDRESS]",
        "EMAIL": "[EMAIL]",
        "DATE": "[DATE]",
    }
)

# ---- primitives ----

KEEP_PRIMITIVES: Final = frozenset(
    {"boolean", "code", "integer", "positiveInt", "unsignedInt", "decimal", "uri", "canonical", "time"}
)
TEXT_PRIMITIVES: Final = frozenset({"string", "markdown"})
DATE_PRIMITIVES: Final = frozenset({"date", "dateTime", "instant"})
REFERENCE: Final = "Reference"
# DICOM UIDs (bare, or as "urn:oid:<uid>"): replaced by the keyed 2.25 UID that
# deid.dicom gives the same UID, so a de-identified ImagingStudy names the UIDs of the
# de-identified .dcm objects. Anything else in such an element is dropped.
UID_PRIMITIVES: Final = frozenset({"dicomUid", "dicomOid"})

# A Reference that says only that its target is unknown (Coverage.payor when the message names
# no payer: FHIR requires one). It names nothing and is kept as it is.
ABSENT_REFERENCE: Final = MappingProxyType(
    {
        "extension": (
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"},
        )
    }
)

# ---- identity of a de-identified resource ----

PSEUDONYM_SYSTEM: Final = "urn:sidecar:pseudonym"

# Resource types whose ``identifier`` is replaced by exactly one pseudonym identifier.
PSEUDONYM_IDENTIFIER_TYPES: Final = frozenset({"Patient"})

# Elements that link a resource to the patient it is about.
PATIENT_LINKS: Final = ("subject", "patient", "beneficiary")

# Added to every output so consumers can assert what they were given.
# (v3 ObservationValue "PSEUDED": pseudonymised.)
DEID_SECURITY_LABEL: Final = MappingProxyType(
    {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "PSEUDED",
        "display": "pseudonymized",
    }
)

# ---- complex datatypes and backbone elements ----

_VALUE_X: Final = {
    "valueQuantity": one("Quantity"),
    "valueCodeableConcept": one("CodeableConcept"),
    "valueString": one("string"),
    "valueBoolean": one("boolean"),
    "valueInteger": one("integer"),
    "valueRange": one("Range"),
    "valueRatio": one("Ratio"),
    "valueTime": one("time"),
    "valueDateTime": one("dateTime"),
    "valuePeriod": one("Period"),
}

_REFERENCE_RANGE: Final = {
    "low": one("Quantity"),
    "high": one("Quantity"),
    "type": one("CodeableConcept"),
    "appliesTo": many("CodeableConcept"),
    "age": one("Range"),
    "text": one("string"),
}

COMPLEX: Final = MappingProxyType(
    {
        # Coding.version/userSelected are left out until someone needs them.
        "Coding": {"system": one("uri"), "code": one("code"), "display": one("string")},
        "CodeableConcept": {"coding": many("Coding"), "text": one("string")},
        "Period": {"start": one("dateTime"), "end": one("dateTime")},
        "Quantity": {
            "value": one("decimal"),
            "comparator": one("code"),
            "unit": one("string"),
            "system": one("uri"),
            "code": one("code"),
        },
        "Range": {"low": one("Quantity"), "high": one("Quantity")},
        "Ratio": {"numerator": one("Quantity"), "denominator": one("Quantity")},
        # Annotation.author[x] is a person and Annotation.time is not needed yet.
        "Annotation": {"text": one("markdown")},
        # Meta.source often carries the sending system's message id; lastUpdated and
        # versionId belong to the store that receives the resource.
        "Meta": {"profile": many("canonical"), "security": many("Coding"), "tag": many("Coding")},
        "Patient.communication": {"language": one("CodeableConcept")},
        # A qualification keeps its code only: identifier/issuer/period name a licence.
        "Practitioner.qualification": {"code": one("CodeableConcept")},
        # A diagnosis of the visit (DG1): which Condition, in what role (admission...), its rank.
        "Encounter.diagnosis": {
            "condition": one(REFERENCE),
            "use": one("CodeableConcept"),
            "rank": one("positiveInt"),
        },
        # Who did what in a procedure (PR1-8/11/12): the function and a reference to the
        # Practitioner, itself a nameless de-identified resource.
        "Procedure.performer": {"function": one("CodeableConcept"), "actor": one(REFERENCE)},
        # The length of a stay (PV2-11) as a UCUM quantity of days.
        "Duration": {
            "value": one("decimal"),
            "unit": one("string"),
            "system": one("uri"),
            "code": one("code"),
        },
        # preAdmissionIdentifier identifies the stay. specialCourtesy (VIP, staff) marks the few
        # patients a hospital treats specially, a quasi-identifier; dietPreference (kosher, halal)
        # states a faith, left out as the religion is. The rest is care, and where they went.
        "Encounter.hospitalization": {
            "admitSource": one("CodeableConcept"),
            "reAdmission": one("CodeableConcept"),
            "specialArrangement": many("CodeableConcept"),
            "destination": one(REFERENCE),
            "dischargeDisposition": one("CodeableConcept"),
        },
        # Where the patient was, as a reference to a de-identified Location, and when.
        "Encounter.location": {"location": one(REFERENCE), "status": one("code"), "period": one("Period")},
        # Who took part, as a reference to a de-identified (nameless) Practitioner or
        # PractitionerRole, in which role and when.
        "Encounter.participant": {
            "type": many("CodeableConcept"),
            "individual": one(REFERENCE),
            "period": one("Period"),
        },
        "Observation.referenceRange": _REFERENCE_RANGE,
        # Attachment.data/url carry the document itself (base64 the scrubber cannot read), and
        # the title may name the patient: only what kind of content it was survives.
        "Attachment": {"contentType": one("code"), "language": one("code")},
        "DocumentReference.content": {"attachment": one("Attachment"), "format": one("Coding")},
        "DocumentReference.context": {
            "encounter": many(REFERENCE),
            "event": many("CodeableConcept"),
            "period": one("Period"),
            "facilityType": one("CodeableConcept"),
            "practiceSetting": one("CodeableConcept"),
            "related": many(REFERENCE),
        },
        # Only the patient (and other resources of the message) survive as actors: a reference
        # to a Practitioner outside the message is dropped by the walker.
        "Appointment.participant": {
            "type": many("CodeableConcept"),
            "actor": one(REFERENCE),
            "required": one("code"),
            "status": one("code"),
            "period": one("Period"),
        },
        # The dosage of a MedicationRequest (Dosage) and of a MedicationAdministration.
        "Dosage": {
            "sequence": one("integer"),
            "asNeededBoolean": one("boolean"),
            "site": one("CodeableConcept"),
            "route": one("CodeableConcept"),
            "method": one("CodeableConcept"),
            "doseAndRate": many("Dosage.doseAndRate"),
        },
        "Dosage.doseAndRate": {
            "type": one("CodeableConcept"),
            "doseQuantity": one("Quantity"),
            "doseRange": one("Range"),
            "rateQuantity": one("Quantity"),
            "rateRatio": one("Ratio"),
        },
        # performer/dispenser are people or places.
        "MedicationRequest.dispenseRequest": {
            "validityPeriod": one("Period"),
            "numberOfRepeatsAllowed": one("unsignedInt"),
            "quantity": one("Quantity"),
        },
        "MedicationAdministration.dosage": {
            "site": one("CodeableConcept"),
            "route": one("CodeableConcept"),
            "method": one("CodeableConcept"),
            "dose": one("Quantity"),
            "rateQuantity": one("Quantity"),
            "rateRatio": one("Ratio"),
        },
        # collector is a person; the accession identifier is dropped with identifier.
        "Specimen.collection": {
            "collectedDateTime": one("dateTime"),
            "collectedPeriod": one("Period"),
            "quantity": one("Quantity"),
            "method": one("CodeableConcept"),
            "bodySite": one("CodeableConcept"),
        },
        "AllergyIntolerance.reaction": {
            "substance": one("CodeableConcept"),
            "manifestation": many("CodeableConcept"),
            "onset": one("dateTime"),
            "severity": one("code"),
            "exposureRoute": one("CodeableConcept"),
        },
        # The study's UID (urn:oid:) is the one identifier kept; the accession number has
        # no "urn:oid:" value and so goes. Referrer, interpreter and endpoint are left out.
        "ImagingStudy.identifier": {"system": one("uri"), "value": one("dicomOid")},
        "ImagingStudy.series": {
            "uid": one("dicomUid"),
            "number": one("unsignedInt"),
            "modality": one("Coding"),
            "description": one("string"),
            "numberOfInstances": one("unsignedInt"),
            "bodySite": one("Coding"),
            "laterality": one("Coding"),
            "started": one("dateTime"),
            "instance": many("ImagingStudy.series.instance"),
        },
        "ImagingStudy.series.instance": {
            "uid": one("dicomUid"),
            "sopClass": one("Coding"),
            "number": one("unsignedInt"),
            "title": one("string"),
        },
        # Who gave the vaccine or ordered it: the function code and the (nameless, re-keyed) actor.
        "Immunization.performer": {"function": one("CodeableConcept"), "actor": one(REFERENCE)},
        # The same for a medication given (ORC-12, function OP).
        "MedicationAdministration.performer": {"function": one("CodeableConcept"), "actor": one(REFERENCE)},
        # A member of the patient's care team (ROL): roles, a reference to the nameless
        # de-identified Practitioner or Organization, the organisation it acts for, and when.
        "CareTeam.participant": {
            "role": many("CodeableConcept"),
            "member": one(REFERENCE),
            "onBehalfOf": one(REFERENCE),
            "period": one("Period"),
        },
        "Observation.component": {
            "code": one("CodeableConcept"),
            **_VALUE_X,
            "dataAbsentReason": one("CodeableConcept"),
            "interpretation": many("CodeableConcept"),
            "referenceRange": many("Observation.referenceRange"),
        },
    }
)

# ---- resources ----
# ``resourceType`` and ``id`` are handled by the walker (the id is always replaced), as is
# ``identifier`` for PSEUDONYM_IDENTIFIER_TYPES.

RESOURCES: Final = MappingProxyType(
    {
        # No extension: the religion (PID-17) is a special category of data (GDPR art. 9) and, for
        # a small faith in a hospital's catchment, a quasi-identifier; a care consequence of it
        # (refusing blood products) is for clinical data to state, not for a faith to imply.
        "Patient": {
            "meta": one("Meta"),
            "gender": one("code"),
            "birthDate": one("date"),
            "deceasedBoolean": one("boolean"),
            "deceasedDateTime": one("dateTime"),
            "maritalStatus": one("CodeableConcept"),
            "multipleBirthBoolean": one("boolean"),
            "communication": many("Patient.communication"),
        },
        "Encounter": {
            "meta": one("Meta"),
            "status": one("code"),
            "class": one("Coding"),
            "type": many("CodeableConcept"),
            "serviceType": one("CodeableConcept"),
            "priority": one("CodeableConcept"),
            "subject": one(REFERENCE),
            "period": one("Period"),
            "hospitalization": one("Encounter.hospitalization"),
            "reasonCode": many("CodeableConcept"),
            # The visit's diagnoses (IG DG1[Encounter]): references to Conditions and codes only.
            "diagnosis": many("Encounter.diagnosis"),
            "participant": many("Encounter.participant"),
            "location": many("Encounter.location"),
            "length": one("Duration"),
            "episodeOfCare": many(REFERENCE),
        },
        # The patient's care team (ROL other than the primary care provider): who, in which role,
        # for whom and why. name, telecom (ROL-12, a person's phone) and note do not survive.
        "CareTeam": {
            "meta": one("Meta"),
            "status": one("code"),
            "category": many("CodeableConcept"),
            "subject": one(REFERENCE),
            "encounter": one(REFERENCE),
            "period": one("Period"),
            "participant": many("CareTeam.participant"),
            "reasonCode": many("CodeableConcept"),
        },
        # An episode of care (PV1-53/54): its status and patient survive; identifier (the
        # sender's episode number) and the description extension (free text) do not.
        "EpisodeOfCare": {
            "meta": one("Meta"),
            "status": one("code"),
            "type": many("CodeableConcept"),
            "patient": one(REFERENCE),
            "period": one("Period"),
        },
        # R5's EncounterHistory standing in a Basic (PV1-43): its code and patient survive; the
        # extensions (the visit, the prior location) go with every extension.
        "Basic": {
            "meta": one("Meta"),
            "code": one("CodeableConcept"),
            "subject": one(REFERENCE),
        },
        "Observation": {
            "meta": one("Meta"),
            "status": one("code"),
            "category": many("CodeableConcept"),
            "code": one("CodeableConcept"),
            "subject": one(REFERENCE),
            "encounter": one(REFERENCE),
            "effectiveDateTime": one("dateTime"),
            "effectivePeriod": one("Period"),
            "effectiveInstant": one("instant"),
            "issued": one("instant"),
            **_VALUE_X,
            "dataAbsentReason": one("CodeableConcept"),
            "interpretation": many("CodeableConcept"),
            "note": many("Annotation"),
            "referenceRange": many("Observation.referenceRange"),
            "method": one("CodeableConcept"),
            "bodySite": one("CodeableConcept"),
            "component": many("Observation.component"),
            "hasMember": many(REFERENCE),
            "derivedFrom": many(REFERENCE),
            # OBX-15/16/23/25: the lab and observers, as references to nameless de-identified targets.
            "performer": many(REFERENCE),
        },
        "DiagnosticReport": {
            "meta": one("Meta"),
            "status": one("code"),
            "category": many("CodeableConcept"),
            "code": one("CodeableConcept"),
            "subject": one(REFERENCE),
            "encounter": one(REFERENCE),
            "effectiveDateTime": one("dateTime"),
            "effectivePeriod": one("Period"),
            "issued": one("instant"),
            # OBR-32/34/35 as references to nameless PractitionerRoles (the function extension goes).
            "performer": many(REFERENCE),
            "resultsInterpreter": many(REFERENCE),
            "result": many(REFERENCE),
            "conclusion": one("string"),
            "conclusionCode": many("CodeableConcept"),
        },
        # identifier/requisition are order numbers; the callback extension is a phone number.
        # performer names people; requester (ORC-12/21, OBR-16) is kept as a reference to a
        # nameless de-identified PractitionerRole or Practitioner (its OBR-17 extension goes).
        "ServiceRequest": {
            "meta": one("Meta"),
            "status": one("code"),
            "intent": one("code"),
            "category": many("CodeableConcept"),
            "priority": one("code"),
            "doNotPerform": one("boolean"),
            "code": one("CodeableConcept"),
            "orderDetail": many("CodeableConcept"),
            "subject": one(REFERENCE),
            "encounter": one(REFERENCE),
            "occurrenceDateTime": one("dateTime"),
            "occurrencePeriod": one("Period"),
            "authoredOn": one("dateTime"),
            "requester": one(REFERENCE),
            "reasonCode": many("CodeableConcept"),
            "bodySite": many("CodeableConcept"),
            "supportingInfo": many(REFERENCE),
            "note": many("Annotation"),
        },
        # masterIdentifier/custodian identify; the content keeps its type. author/authenticator
        # (TXA-9/10) are kept as references to nameless de-identified Practitioners.
        "DocumentReference": {
            "meta": one("Meta"),
            "status": one("code"),
            "docStatus": one("code"),
            "type": one("CodeableConcept"),
            "category": many("CodeableConcept"),
            "subject": one(REFERENCE),
            "date": one("instant"),
            "author": many(REFERENCE),
            "authenticator": one(REFERENCE),
            "description": one("string"),
            "securityLabel": many("CodeableConcept"),
            "content": many("DocumentReference.content"),
            "context": one("DocumentReference.context"),
        },
        "Appointment": {
            "meta": one("Meta"),
            "status": one("code"),
            "cancelationReason": one("CodeableConcept"),
            "serviceCategory": many("CodeableConcept"),
            "serviceType": many("CodeableConcept"),
            "specialty": many("CodeableConcept"),
            "appointmentType": one("CodeableConcept"),
            "reasonCode": many("CodeableConcept"),
            "priority": one("unsignedInt"),
            "description": one("string"),
            "start": one("instant"),
            "end": one("instant"),
            "minutesDuration": one("positiveInt"),
            "created": one("dateTime"),
            "comment": one("string"),
            "participant": many("Appointment.participant"),
        },
        # manufacturer/location name places; performer keeps its function and a reference.
        "Immunization": {
            "meta": one("Meta"),
            "status": one("code"),
            "statusReason": one("CodeableConcept"),
            "vaccineCode": one("CodeableConcept"),
            "patient": one(REFERENCE),
            "encounter": one(REFERENCE),
            "occurrenceDateTime": one("dateTime"),
            "occurrenceString": one("string"),
            "recorded": one("dateTime"),
            "primarySource": one("boolean"),
            "lotNumber": one("string"),
            "expirationDate": one("date"),
            "site": one("CodeableConcept"),
            "route": one("CodeableConcept"),
            "doseQuantity": one("Quantity"),
            "performer": many("Immunization.performer"),
            "note": many("Annotation"),
            "reasonCode": many("CodeableConcept"),
            "isSubpotent": one("boolean"),
            "subpotentReason": many("CodeableConcept"),
            "programEligibility": many("CodeableConcept"),
            "fundingSource": one("CodeableConcept"),
        },
        # performer/recorder name people; identifier holds the order numbers. requester (RXO-14,
        # ORC-12) is kept as a reference to a nameless de-identified Practitioner.
        "MedicationRequest": {
            "meta": one("Meta"),
            "status": one("code"),
            "statusReason": one("CodeableConcept"),
            "intent": one("code"),
            "category": many("CodeableConcept"),
            "priority": one("code"),
            "doNotPerform": one("boolean"),
            "medicationCodeableConcept": one("CodeableConcept"),
            "subject": one(REFERENCE),
            "encounter": one(REFERENCE),
            "authoredOn": one("dateTime"),
            "requester": one(REFERENCE),
            "reasonCode": many("CodeableConcept"),
            "note": many("Annotation"),
            "dosageInstruction": many("Dosage"),
            "dispenseRequest": one("MedicationRequest.dispenseRequest"),
        },
        # performer/location/receiver/destination are people and places.
        "MedicationDispense": {
            "meta": one("Meta"),
            "status": one("code"),
            "category": one("CodeableConcept"),
            "medicationCodeableConcept": one("CodeableConcept"),
            "subject": one(REFERENCE),
            "context": one(REFERENCE),
            "authorizingPrescription": many(REFERENCE),
            "type": one("CodeableConcept"),
            "quantity": one("Quantity"),
            "daysSupply": one("Quantity"),
            "whenPrepared": one("dateTime"),
            "whenHandedOver": one("dateTime"),
            "note": many("Annotation"),
            "dosageInstruction": many("Dosage"),
        },
        "MedicationAdministration": {
            "meta": one("Meta"),
            "status": one("code"),
            "statusReason": many("CodeableConcept"),
            "category": one("CodeableConcept"),
            "medicationCodeableConcept": one("CodeableConcept"),
            "subject": one(REFERENCE),
            "context": one(REFERENCE),
            "effectiveDateTime": one("dateTime"),
            "effectivePeriod": one("Period"),
            "reasonCode": many("CodeableConcept"),
            "performer": many("MedicationAdministration.performer"),
            "request": one(REFERENCE),
            "note": many("Annotation"),
            "dosage": one("MedicationAdministration.dosage"),
        },
        # recorder is a person; evidence/stage are left out until someone needs them. identifier
        # (DG1-20, the sender's diagnosis number) and the extensions (asserted date, dueTo by
        # identifier) are dropped: numbers of the sender's records, no clinical content.
        "Condition": {
            "meta": one("Meta"),
            "clinicalStatus": one("CodeableConcept"),
            "verificationStatus": one("CodeableConcept"),
            "category": many("CodeableConcept"),
            "severity": one("CodeableConcept"),
            "code": one("CodeableConcept"),
            "bodySite": many("CodeableConcept"),
            "subject": one(REFERENCE),
            "encounter": one(REFERENCE),
            "onsetDateTime": one("dateTime"),
            "abatementDateTime": one("dateTime"),
            "recordedDate": one("dateTime"),
            # The diagnosing clinician (DG1-16): a reference to a nameless de-identified Practitioner.
            "asserter": one(REFERENCE),
            "note": many("Annotation"),
        },
        # accessionIdentifier identifies; collection.collector is a person.
        "Specimen": {
            "meta": one("Meta"),
            "status": one("code"),
            "type": one("CodeableConcept"),
            "subject": one(REFERENCE),
            "receivedTime": one("dateTime"),
            "parent": many(REFERENCE),
            "request": many(REFERENCE),
            "collection": one("Specimen.collection"),
            "condition": many("CodeableConcept"),
            "note": many("Annotation"),
        },
        # recorder/asserter/location are people and places; identifier (PR1-19) and partOf (a
        # reference by that identifier, PR1-25) are the sender's record numbers.
        "Procedure": {
            "meta": one("Meta"),
            "status": one("code"),
            "statusReason": one("CodeableConcept"),
            "category": one("CodeableConcept"),
            "code": one("CodeableConcept"),
            "subject": one(REFERENCE),
            "encounter": one(REFERENCE),
            "performedDateTime": one("dateTime"),
            "performedPeriod": one("Period"),
            "reasonCode": many("CodeableConcept"),
            "bodySite": many("CodeableConcept"),
            "outcome": one("CodeableConcept"),
            "note": many("Annotation"),
            # Function (anesthesiologist, surgeon) and a reference to the de-identified Practitioner.
            "performer": many("Procedure.performer"),
        },
        # performer/enterer/costCenter/account name people, places and billing accounts.
        "ChargeItem": {
            "meta": one("Meta"),
            "status": one("code"),
            "code": one("CodeableConcept"),
            "subject": one(REFERENCE),
            "context": one(REFERENCE),
            "occurrenceDateTime": one("dateTime"),
            "occurrencePeriod": one("Period"),
            "quantity": one("Quantity"),
            "bodysite": many("CodeableConcept"),
            "reason": many("CodeableConcept"),
            "note": many("Annotation"),
        },
        "ImagingStudy": {
            "meta": one("Meta"),
            "identifier": many("ImagingStudy.identifier"),
            "status": one("code"),
            "modality": many("Coding"),
            "subject": one(REFERENCE),
            "encounter": one(REFERENCE),
            "started": one("dateTime"),
            "basedOn": many(REFERENCE),
            "numberOfSeries": one("unsignedInt"),
            "numberOfInstances": one("unsignedInt"),
            "procedureCode": many("CodeableConcept"),
            "reasonCode": many("CodeableConcept"),
            "description": one("string"),
            "series": many("ImagingStudy.series"),
        },
        # A relative or contact person (NK1): what they are to the patient survives; who they
        # are does not. Name, telecom, address, birthDate and identifier are HIPAA identifiers of
        # relatives; period and photo are left out with them (no clinical use, a date of a person).
        "RelatedPerson": {
            "meta": one("Meta"),
            "active": one("boolean"),
            "patient": one(REFERENCE),
            "relationship": many("CodeableConcept"),
            "gender": one("code"),
            # The same shape as Patient.communication (of which only the language is kept).
            "communication": many("Patient.communication"),
        },
        # A patient's insurance (IN1): what kind of cover, for whom, when, and which payer survive.
        # identifier (plan id), the subscriberId extension and class (group and plan numbers: an
        # employer's group identifies a small workforce) do not. subscriber and policyHolder survive
        # as references only: their targets (a nameless RelatedPerson, an Organization) are
        # de-identified resources of their own.
        "Coverage": {
            "meta": one("Meta"),
            "status": one("code"),
            "type": one("CodeableConcept"),
            "beneficiary": one(REFERENCE),
            "relationship": one("CodeableConcept"),
            "period": one("Period"),
            "payor": many(REFERENCE),
            "order": one("positiveInt"),
            "subscriber": one(REFERENCE),
            "policyHolder": one(REFERENCE),
        },
        # A payer, facility or laboratory: an organisation's name is not a person's identifier
        # (scrubbed as text all the same); its identifier, address and telecom are left out with
        # no use downstream.
        "Organization": {
            "meta": one("Meta"),
            "active": one("boolean"),
            "type": many("CodeableConcept"),
            "name": one("string"),
        },
        # Staff (XCN, CNN): who they are is handled as staff names are in text (removed); their
        # qualification (MD, RN) says what kind of clinician acted and survives.
        "Practitioner": {
            "meta": one("Meta"),
            "active": one("boolean"),
            "qualification": many("Practitioner.qualification"),
        },
        # A practitioner in a role for an organisation: the role, specialty and period survive.
        "PractitionerRole": {
            "meta": one("Meta"),
            "active": one("boolean"),
            "period": one("Period"),
            "practitioner": one(REFERENCE),
            "organization": one(REFERENCE),
            "code": many("CodeableConcept"),
            "specialty": many("CodeableConcept"),
        },
        # A ward, room or bed (PL) or the kind of place a patient was discharged to (DLD): what
        # kind of place it is survives. identifier, name and description hold the ward, room
        # and bed numbers: not a patient identifier under HIPAA, but with the stay's dates they
        # single out one patient, and no use downstream needs them.
        "Location": {
            "meta": one("Meta"),
            "status": one("code"),
            "operationalStatus": one("Coding"),
            "mode": one("code"),
            "type": many("CodeableConcept"),
            "physicalType": one("CodeableConcept"),
            "partOf": one(REFERENCE),
        },
        # recorder/asserter are people.
        "AllergyIntolerance": {
            "meta": one("Meta"),
            "clinicalStatus": one("CodeableConcept"),
            "verificationStatus": one("CodeableConcept"),
            "type": one("code"),
            "category": many("code"),
            "criticality": one("code"),
            "code": one("CodeableConcept"),
            "patient": one(REFERENCE),
            "encounter": one(REFERENCE),
            "onsetDateTime": one("dateTime"),
            "recordedDate": one("dateTime"),
            "lastOccurrence": one("dateTime"),
            "note": many("Annotation"),
            "reaction": many("AllergyIntolerance.reaction"),
        },
    }
)


def check_policy() -> None:
    """Fail loudly if the tables name a type that no treatment covers (run by the tests)."""
    known = KEEP_PRIMITIVES | TEXT_PRIMITIVES | DATE_PRIMITIVES | UID_PRIMITIVES | {REFERENCE} | set(COMPLEX)
    for owner, elements in [*RESOURCES.items(), *COMPLEX.items()]:
        for name, element in elements.items():
            if element.type not in known:
                raise ValueError(f"policy: {owner}.{name} has unknown type {element.type}")
