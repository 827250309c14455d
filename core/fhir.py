"""FHIR R4 helpers shared by both zones: validation and Bundle assembly.

fhir.resources 8 ships no R4 package; its R4B models are used instead. For the resources
this project emits (Patient, Encounter, Observation, DiagnosticReport, DocumentReference,
Provenance, ...) R4B's JSON is wire-compatible with R4, which is why validating against
R4B is sound here (see docs/architecture.md).
"""

from __future__ import annotations

import importlib
import uuid
from functools import cache
from typing import Any

from pydantic import ValidationError

FhirJson = dict[str, Any]

# A fixed namespace so a Bundle entry's fullUrl is the same every time the same
# resource is emitted (consumers can de-duplicate on it).
_FULLURL_NAMESPACE = uuid.UUID("5b0e3c1e-6f7a-4d8e-9a51-0f1d2c3b4a59")


class FhirValidationError(ValueError):
    """A resource did not validate; ``args[0]`` is a short reason without data values."""


@cache
def _model_for(resource_type: str) -> Any:
    try:
        module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
        return getattr(module, resource_type)
    except (ImportError, AttributeError) as exc:
        raise FhirValidationError(f"unknown resource type {resource_type!r}") from exc


def validate_resource(resource: FhirJson) -> None:
    """Validate one resource against the R4B model of its type.

    The reason names element paths and error kinds only, never values, because the
    resource may still be identified when this runs.
    """
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise FhirValidationError("resource has no resourceType")
    model = _model_for(resource_type)
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['type']}" for err in exc.errors()[:5]
        )
        raise FhirValidationError(f"{resource_type} invalid: {problems}") from None


def full_url(resource: FhirJson) -> str:
    return f"urn:uuid:{uuid.uuid5(_FULLURL_NAMESPACE, resource['resourceType'] + '/' + resource['id'])}"


def transaction_bundle(resources: list[FhirJson], *, validate: bool = True) -> FhirJson:
    """A transaction Bundle that PUTs every resource at its deterministic id.

    PUT (not POST) so that replaying the same message upserts instead of duplicating.
    """
    bundle: FhirJson = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": full_url(r),
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }
    if validate:
        validate_resource(bundle)
    return bundle


def collection_bundle(resources: list[FhirJson]) -> FhirJson:
    """A collection Bundle: how the sandbox receives a patient's context."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": full_url(r), "resource": r} for r in resources],
    }
