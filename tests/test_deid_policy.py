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
        ("Observation.referenceRange", "observation", "ObservationReferenceRange"),
        ("Observation.component", "observation", "ObservationComponent"),
    ],
)
def test_every_allowed_datatype_element_exists_in_the_fhir_model(type_name, module, model):
    fields = _fields_by_alias(getattr(importlib.import_module(f"fhir.resources.R4B.{module}"), model))
    assert not set(policy.COMPLEX[type_name]) - fields


def test_every_complex_type_is_tested_above():
    assert set(policy.COMPLEX) == {
        "Coding", "CodeableConcept", "Period", "Quantity", "Range", "Ratio", "Annotation", "Meta",
        "Patient.communication", "Encounter.hospitalization", "Observation.referenceRange",
        "Observation.component",
    }  # fmt: skip


def test_patient_allow_list_excludes_direct_identifiers():
    forbidden = {"name", "telecom", "address", "contact", "photo", "text", "extension", "identifier",
                 "generalPractitioner", "managingOrganization", "link"}  # fmt: skip
    assert not forbidden & set(policy.RESOURCES["Patient"])
    for resource_type, elements in policy.RESOURCES.items():
        assert not {"text", "extension", "modifierExtension", "identifier", "contained"} & set(elements), (
            resource_type
        )
