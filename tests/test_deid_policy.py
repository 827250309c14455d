import importlib

import pytest

from deid import policy


def test_policy_names_only_known_types():
    policy.check_policy()


def _fields_by_alias(model):
    return {(info.alias or name) for name, info in model.model_fields.items()}


@pytest.mark.parametrize("resource_type", sorted(policy.RESOURCES))
def test_every_allowed_element_exists_in_the_fhir_model(resource_type):
    # A typo in the allow-list would silently drop data; check names against the R4B models.
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    fields = _fields_by_alias(getattr(module, resource_type))
    unknown = set(policy.RESOURCES[resource_type]) - fields
    assert not unknown


@pytest.mark.parametrize(
    ("type_name", "module", "model"),
    [
        ("Coding", "coding", "Coding"),
        ("CodeableConcept", "codeableconcept", "CodeableConcept"),
        ("Period", "period", "Period"),
        ("Quantity", "quantity", "Quantity"),
        ("Range", "range", "Range"),
        ("Ratio", "ratio", "Ratio"),
        ("Annotation", "annotation", "Annotation"),
        ("Meta", "meta", "Meta"),
        ("Patient.communication", "patient", "PatientCommunication"),
        ("Encounter.hospitalization", "encounter", "EncounterHospitalization"),
        ("Encounter.diagnosis", "encounter", "EncounterDiagnosis"),
        ("Procedure.performer", "procedure", "ProcedurePerformer"),
        ("Encounter.location", "encounter", "EncounterLocation"),
        ("Encounter.participant", "encounter", "EncounterParticipant"),
        ("Duration", "duration", "Duration"),
        ("Observation.referenceRange", "observation", "ObservationReferenceRange"),
        ("Observation.component", "observation", "ObservationComponent"),
        ("Attachment", "attachment", "Attachment"),
        ("DocumentReference.content", "documentreference", "DocumentReferenceContent"),
        ("DocumentReference.context", "documentreference", "DocumentReferenceContext"),
        ("Appointment.participant", "appointment", "AppointmentParticipant"),
        ("Dosage", "dosage", "Dosage"),
        ("Dosage.doseAndRate", "dosage", "DosageDoseAndRate"),
        ("MedicationRequest.dispenseRequest", "medicationrequest", "MedicationRequestDispenseRequest"),
        ("MedicationAdministration.dosage", "medicationadministration", "MedicationAdministrationDosage"),
        ("Specimen.collection", "specimen", "SpecimenCollection"),
        ("AllergyIntolerance.reaction", "allergyintolerance", "AllergyIntoleranceReaction"),
        ("ImagingStudy.identifier", "identifier", "Identifier"),
        ("ImagingStudy.series", "imagingstudy", "ImagingStudySeries"),
        ("ImagingStudy.series.instance", "imagingstudy", "ImagingStudySeriesInstance"),
        ("Practitioner.qualification", "practitioner", "PractitionerQualification"),
        ("CareTeam.participant", "careteam", "CareTeamParticipant"),
        ("Immunization.performer", "immunization", "ImmunizationPerformer"),
        (
            "MedicationAdministration.performer",
            "medicationadministration",
            "MedicationAdministrationPerformer",
        ),
    ],
)
def test_every_allowed_datatype_element_exists_in_the_fhir_model(type_name, module, model):
    fields = _fields_by_alias(getattr(importlib.import_module(f"fhir.resources.R4B.{module}"), model))
    assert not set(policy.COMPLEX[type_name]) - fields


def test_every_complex_type_is_tested_above():
    assert set(policy.COMPLEX) == {
        "Coding", "CodeableConcept", "Period", "Quantity", "Range", "Ratio", "Annotation", "Meta",
        "Patient.communication", "Encounter.hospitalization", "Observation.referenceRange",
        "Observation.component", "Attachment", "DocumentReference.content", "DocumentReference.context",
        "Appointment.participant", "Dosage", "Dosage.doseAndRate", "MedicationRequest.dispenseRequest",
        "MedicationAdministration.dosage", "Specimen.collection", "AllergyIntolerance.reaction",
        "ImagingStudy.identifier", "ImagingStudy.series", "ImagingStudy.series.instance",
        "Practitioner.qualification", "Immunization.performer", "MedicationAdministration.performer",
        "Encounter.diagnosis", "Procedure.performer", "Encounter.location", "Encounter.participant",
        "Duration", "CareTeam.participant",
    }  # fmt: skip


def test_patient_allow_list_excludes_direct_identifiers():
    forbidden = {"name", "telecom", "address", "contact", "photo", "text", "extension", "identifier",
                 "generalPractitioner", "managingOrganization", "link"}  # fmt: skip
    assert not forbidden & set(policy.RESOURCES["Patient"])
    for resource_type, elements in policy.RESOURCES.items():
        identifying = {"text", "extension", "modifierExtension", "identifier", "contained"}
        if resource_type == "ImagingStudy":
            # The one exception: the study's DICOM UID, re-keyed like the de-identified .dcm's
            # (every other identifier value is dropped by the UID primitive).
            assert elements["identifier"].type == "ImagingStudy.identifier"
            assert policy.COMPLEX["ImagingStudy.identifier"]["value"].type in policy.UID_PRIMITIVES
            identifying.discard("identifier")
        assert not identifying & set(elements), resource_type


def _reference_only(type_name: str) -> bool:
    """A reference, or a backbone (Immunization/MedicationAdministration.performer) of a reference
    and a CodeableConcept."""
    if type_name == policy.REFERENCE:
        return True
    members = policy.COMPLEX.get(type_name, {})
    kinds = sorted(element.type for element in members.values())
    return kinds == sorted(["CodeableConcept", policy.REFERENCE])


def test_new_resource_allow_lists_drop_people_and_identifiers():
    identifying = {"custodian", "masterIdentifier", "requisition", "manufacturer", "name"}
    # Staff and places are kept only as references: their targets (Practitioner, Organization,
    # Location) are de-identified resources of their own, re-keyed per patient, without names.
    people = {"requester", "performer", "author", "authenticator", "location", "asserter",
              "recorder", "resultsInterpreter", "generalPractitioner"}  # fmt: skip
    for resource_type in ("ServiceRequest", "DocumentReference", "Appointment", "Immunization",
                          "MedicationRequest", "MedicationDispense", "MedicationAdministration",
                          "Condition", "Specimen", "Procedure", "AllergyIntolerance",
                          "ChargeItem", "DiagnosticReport", "Observation", "CareTeam",
                          "EpisodeOfCare", "Basic"):  # fmt: skip
        assert resource_type in policy.RESOURCES
        elements = policy.RESOURCES[resource_type]
        assert not identifying & set(elements), resource_type
        for name in people & set(elements):
            assert _reference_only(elements[name].type), (resource_type, name)
    # The document's bytes are never passed on: base64 is beyond the scrubber.
    assert not {"data", "url", "title"} & set(policy.COMPLEX["Attachment"])


# PV1-20 financial class, PV1-43 prior temporary location, PV1-53/54 service episode.
PV1_LINKS = "|".join(
    ["PV1|1|I|W1^1^A^HOSP", *[""] * 15, "VN-1^^^HOSP^VN", "SP^20240301", *[""] * 22, "ED^3^^HOSP",
     *[""] * 9, "Stroke rehab ZHANG WEI", "EP-1^^^HOSP"]
)  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "segments", "resource_type", "kept"),
    [
        (
            "ORM^O01",
            ["ORC|NW|PL-1^HIS", "OBR|1|PL-1^HIS||24725-4^CT Head^LN|S", "NTE|1||Call ZHANG WEI on arrival"],
            "ServiceRequest",
            {"status", "intent", "code", "subject", "priority", "note"},
        ),
        (
            "MDM^T02",
            [
                "TXA|1|CN^Consult|TX|||20240305101500+0800||||||DOC-1^HIS",
                "OBX|1|TX|11488-4^Note^LN||Seen today",
            ],
            "DocumentReference",
            {"status", "type", "subject", "date", "content"},
        ),
        (
            "SIU^S12",
            [
                "SCH|P-1|F-1||||||||||||||||||||||||Booked",
                "TQ1|||||||20240310090000+0800|20240310093000+0800",
            ],
            "Appointment",
            {"status", "start", "end", "participant"},
        ),
        (
            "VXU^V04",
            ["ORC|RE||IZ-1^HIS", "RXA|0|1|20240301||08^HepB^CVX|0.5|mL^mL^UCUM||||||||LOT-7"],
            "Immunization",
            {"status", "vaccineCode", "patient", "occurrenceDateTime", "doseQuantity", "lotNumber"},
        ),
        (
            "RDE^O11",
            [
                "ORC|NW|PL-7^HIS|||||||20240305101500+0800",
                "RXE|^^^20240305|00071^Aspirin^NDC|100||mg^mg^UCUM|||||30|TAB^tablet^HL70292|2",
                "NTE|1||Call ZHANG WEI before dispensing",
                "RXR|PO^Oral^HL70162",
            ],
            "MedicationRequest",
            {
                "status",
                "intent",
                "medicationCodeableConcept",
                "subject",
                "authoredOn",
                "dosageInstruction",
                "dispenseRequest",
                "note",
            },
        ),
        (
            "RDS^O13",
            ["ORC|RE|PL-8^HIS", "RXD|1|00071^Aspirin^NDC|20240305120000+0800|30|TAB^tablet^HL70292"],
            "MedicationDispense",
            {"status", "medicationCodeableConcept", "subject", "quantity", "whenHandedOver"},
        ),
        (
            "RAS^O17",
            [
                "ORC|RE|PL-9^HIS",
                "RXA|0|1|20240305130000+0800||00071^Aspirin^NDC|100|mg^mg^UCUM",
                "RXR|PO^Oral^HL70162",
            ],
            "MedicationAdministration",
            {"status", "medicationCodeableConcept", "subject", "effectiveDateTime", "dosage"},
        ),
        (
            "PPR^PC1",
            ["PRB|AD|20240305|I10^Hypertension^I10||||20240301|||||||||20230101", "NTE|1||ZHANG WEI reports"],
            "Condition",
            {"category", "code", "subject", "recordedDate", "onsetDateTime", "note"},
        ),
        (
            "OUL^R22",
            ["SPM|1|SP-1^HIS||BLD^Blood^HL70487|||||||||||||20240305080000+0800|20240305090000+0800"],
            "Specimen",
            {"type", "subject", "collection", "receivedTime"},
        ),
        (
            "DFT^P03",
            ["PR1|1||0JB^Appendectomy^ICD10PCS||20240304"],
            "Procedure",
            {"status", "code", "subject", "performedDateTime"},
        ),
        (
            "DFT^P03",
            ["FT1|1|||20240305|20240305|CG|99213^Office visit^C4|||1"],
            "ChargeItem",
            {"status", "code", "subject", "occurrenceDateTime", "quantity"},
        ),
        (
            "ADR^A19",
            ["AL1|1|DA|70618^Penicillin^RXNORM|SV|Hives|20200101"],
            "AllergyIntolerance",
            {"category", "criticality", "code", "patient", "onsetDateTime", "reaction"},
        ),
        (
            "ADT^A01",
            ["ROL|R-1|AD|RP^Referring^HL70443|77^LI^NA|20240101||||||||^WPN^PH^^86^10^5550101||Heart^^H-1"],
            "CareTeam",
            {"status", "subject", "participant"},
        ),
        (
            "ADT^A01",
            [PV1_LINKS],
            "Coverage",
            {"status", "type", "beneficiary", "payor"},
        ),
        (
            "ADT^A01",
            [PV1_LINKS],
            "EpisodeOfCare",
            {"status", "patient"},
        ),
        (
            "ADT^A01",
            [PV1_LINKS],
            "Basic",
            {"code", "subject"},
        ),
    ],
)
def test_new_resource_types_deidentify_and_validate(kind, segments, resource_type, kept):
    from core.fhir import validate_resource
    from deid import Vault, deidentify
    from mapping import map_message

    msh = f"MSH|^~\\&|APP|HOSP|SIDECAR|HOSP|20240305101500+0800||{kind}|CTRL-1|P|2.5.1"
    pid = "PID|1||MRN-4711^^^HOSP^MR||ZHANG^WEI||19800215|M"
    mapped = map_message("\r".join([msh, pid, *segments]))
    keys = {k: (v.authority, v.value) for k, v in mapped.patient_keys.items()}
    result = deidentify(mapped.resources, keys, mapped.phi_values, Vault(b"test-secret-0123456789abcdef-xyz"))
    (out,) = [r.resource for r in result.resources if r.resource["resourceType"] == resource_type]
    validate_resource(out)
    assert kept <= set(out)
    assert "identifier" not in out and "masterIdentifier" not in out
    if "note" in out:
        assert "ZHANG" not in out["note"][0]["text"]
    if resource_type == "DocumentReference":
        assert out["content"][0]["attachment"] == {"contentType": "text/plain; charset=utf-8"}
