"""Identified FHIR resources of one message -> de-identified resources.

The walk is driven entirely by ``policy``: for each resource it builds a new dict from
the allowed elements only, so nothing is copied by default and the input is never
touched. Ids are replaced by keyed ones, references are rewritten to them (or dropped),
dates are shifted per patient and free text is scrubbed. The output is then checked for
leaks and validated before it is returned; any doubt raises DeidError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from core.errors import DeidError
from core.fhir import FhirValidationError, validate_resource

from .dates import shift_fhir_date
from .dicom.values import uid_hash
from .leak import check_no_leak
from .policy import (
    COMPLEX,
    DATE_PRIMITIVES,
    DEID_SECURITY_LABEL,
    KEEP_PRIMITIVES,
    PATIENT_LINKS,
    PSEUDONYM_IDENTIFIER_TYPES,
    PSEUDONYM_SYSTEM,
    REFERENCE,
    RESOURCES,
    TEXT_PRIMITIVES,
    UID_PRIMITIVES,
    Element,
)
from .scrub import Scrubber
from .vault import Vault

_REFERENCE = re.compile(r"(?P<type>[A-Z][A-Za-z]{0,63})/(?P<id>[A-Za-z0-9\-.]{1,64})")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")

# The JSON shapes a kept primitive may have; anything else is refused rather than copied.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "boolean": (bool,),
    "integer": (int,),
    "positiveInt": (int,),
    "unsignedInt": (int,),
    "decimal": (int, float),
}


@dataclass(frozen=True)
class DeidentifiedResource:
    resource: dict[str, Any]  # de-identified FHIR JSON, validated
    patient: str | None  # pseudonym of the patient it belongs to


@dataclass(frozen=True)
class DeidResult:
    resources: list[DeidentifiedResource]
    patients: tuple[str, ...]  # pseudonyms of the patients in the message, in order


@dataclass(frozen=True)
class _Context:
    scrubber: Scrubber
    targets: Mapping[tuple[str, str], str]  # (resource type, source id) -> new id
    days: int | None  # the owning patient's date shift; None if the message has no patient
    vault: Vault  # keys DICOM UIDs exactly as deid.dicom does


OLDEST_AGE = 89


def pooled_birth_year(birth_date: Any, today: date) -> str | None:
    """For a patient older than 89: the birth year of a 90-year-old, as a year-only date.

    HIPAA Safe Harbor lets ages over 89 survive only pooled into one "90 or older"
    category, and a birth date (even shifted by a few days) gives the age away. All such
    patients then share one birth year; a younger patient's date is shifted as usual (None).
    """
    if not isinstance(birth_date, str) or len(birth_date) < 4 or not birth_date[:4].isdigit():
        return None
    year = int(birth_date[:4])
    month, day = 12, 31  # a date of year precision: the latest it can be, the youngest age
    if len(birth_date) >= 7 and birth_date[5:7].isdigit():
        month = int(birth_date[5:7])
        day = int(birth_date[8:10]) if len(birth_date) >= 10 and birth_date[8:10].isdigit() else 31
    age = today.year - year - ((today.month, today.day) < (month, day))
    return str(today.year - (OLDEST_AGE + 1)) if age > OLDEST_AGE else None


def _safe_type(resource_type: object) -> str:
    # Only a well-formed type name goes into an error message.
    if isinstance(resource_type, str) and _RESOURCE_TYPE.fullmatch(resource_type):
        return resource_type
    return "?"


_DICOM_UID = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")
_OID_PREFIX = "urn:oid:"


def _keyed_uid(value: Any, type_name: str, ctx: _Context, path: str) -> str | None:
    if not isinstance(value, str):
        raise DeidError(f"{path}: expected a UID string")
    prefix = _OID_PREFIX if type_name == "dicomOid" else ""
    if not value.startswith(prefix):
        return None
    uid = value[len(prefix) :]
    if len(uid) > 64 or not _DICOM_UID.fullmatch(uid):
        return None
    return prefix + uid_hash(ctx.vault, uid)


def _primitive(value: Any, type_name: str, ctx: _Context, path: str) -> Any:
    if type_name in UID_PRIMITIVES:
        return _keyed_uid(value, type_name, ctx, path)
    if type_name in TEXT_PRIMITIVES:
        if not isinstance(value, str):
            raise DeidError(f"{path}: expected a string")
        scrubbed = ctx.scrubber.scrub(value, ctx.days)
        return scrubbed if scrubbed.strip() else None
    if type_name in DATE_PRIMITIVES:
        if not isinstance(value, str):
            raise DeidError(f"{path}: expected a date string")
        if ctx.days is None:
            raise DeidError(f"{path}: no patient to key a date shift")
        try:
            return shift_fhir_date(value, ctx.days)
        except ValueError as exc:
            raise DeidError(f"{path}: {exc}") from exc
    expected = _JSON_TYPES.get(type_name, (str,))
    if isinstance(value, bool) != (bool in expected) or not isinstance(value, expected):
        raise DeidError(f"{path}: unexpected JSON type for {type_name}")
    return value


def _reference(value: Any, ctx: _Context, path: str) -> dict[str, str] | None:
    if not isinstance(value, Mapping):
        raise DeidError(f"{path}: expected a Reference object")
    ref = value.get("reference")
    # Identifier-only and display-only references are dropped: a display is often a name.
    if not isinstance(ref, str) or (match := _REFERENCE.fullmatch(ref.strip())) is None:
        return None
    new_id = ctx.targets.get((match["type"], match["id"]))
    return {"reference": f"{match['type']}/{new_id}"} if new_id else None


def _value(value: Any, type_name: str, ctx: _Context, path: str) -> Any:
    """The de-identified form of one value, or None if nothing of it may stay."""
    if value is None:
        return None
    if type_name == REFERENCE:
        return _reference(value, ctx, path)
    if type_name in COMPLEX:
        return _object(value, COMPLEX[type_name], ctx, path)
    if type_name in KEEP_PRIMITIVES | TEXT_PRIMITIVES | DATE_PRIMITIVES | UID_PRIMITIVES:
        return _primitive(value, type_name, ctx, path)
    raise DeidError(f"{path}: policy names unknown type {type_name}")


def _element(value: Any, element: Element, ctx: _Context, path: str) -> Any:
    if element.many:
        if not isinstance(value, list):
            raise DeidError(f"{path}: expected a list")
        kept = [_value(item, element.type, ctx, f"{path}[{i}]") for i, item in enumerate(value)]
        return [item for item in kept if item is not None] or None
    if isinstance(value, list):
        raise DeidError(f"{path}: expected a single value, not a list")
    return _value(value, element.type, ctx, path)


def _object(value: Any, fields: Mapping[str, Element], ctx: _Context, path: str) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        raise DeidError(f"{path}: expected an object")
    out: dict[str, Any] = {}
    for name, element in fields.items():
        if name in value:
            kept = _element(value[name], element, ctx, f"{path}.{name}")
            if kept is not None and kept != "" and kept != {}:
                out[name] = kept
    # FHIR forbids empty objects, so an object with nothing left goes entirely.
    return out or None


def _with_security_label(meta: dict[str, Any] | None) -> dict[str, Any]:
    meta = dict(meta or {})
    labels = list(meta.get("security", []))
    if not any(
        lab.get("system") == DEID_SECURITY_LABEL["system"] and lab.get("code") == DEID_SECURITY_LABEL["code"]
        for lab in labels
    ):
        labels.append(dict(DEID_SECURITY_LABEL))
    meta["security"] = labels
    return meta


def _patient_link(resource: Mapping[str, Any]) -> str | None:
    """The source id of the Patient a resource is about, if it names one."""
    for link in PATIENT_LINKS:
        ref = resource.get(link)
        if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
            match = _REFERENCE.fullmatch(ref["reference"].strip())
            if match is not None and match["type"] == "Patient":
                return match["id"]
    return None


def _index(resources: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(resource type, source id) per resource, after checking the shape the walk relies on."""
    if not isinstance(resources, list):
        raise DeidError("resources must be a list")
    keys: list[tuple[str, str]] = []
    for i, resource in enumerate(resources):
        if not isinstance(resource, Mapping):
            raise DeidError(f"resources[{i}] is not an object")
        resource_type, source_id = resource.get("resourceType"), resource.get("id")
        if not isinstance(resource_type, str) or resource_type not in RESOURCES:
            raise DeidError(f"resources[{i}]: no de-identification policy for {_safe_type(resource_type)}")
        if not isinstance(source_id, str) or not source_id:
            raise DeidError(f"resources[{i}] {resource_type} has no id")
        if (resource_type, source_id) in keys:
            raise DeidError(f"resources[{i}] {resource_type}: duplicate id in one message")
        keys.append((resource_type, source_id))
    return keys


def _pseudonyms(patient_keys: dict[str, tuple[str, str]], vault: Vault) -> dict[str, str]:
    if not isinstance(patient_keys, Mapping):
        raise DeidError("patient_keys must map a Patient id to (authority, value)")
    out: dict[str, str] = {}
    for source_id, key in patient_keys.items():
        if (
            not isinstance(source_id, str)
            or not isinstance(key, tuple | list)
            or len(key) != 2
            or not all(isinstance(part, str) for part in key)
        ):
            raise DeidError("patient_keys must map a Patient id to (authority, value)")
        out[source_id] = vault.pseudonym(key[0], key[1])
    return out


def deidentify(
    resources: list[dict[str, Any]],
    patient_keys: dict[str, tuple[str, str]],
    phi_values: dict[str, str],
    vault: Vault,
    *,
    today: date | None = None,
) -> DeidResult:
    """De-identify the resources of one message; raises DeidError if it cannot do so safely.

    ``today``: the day ages are counted to (tests pin it; default: the current date)."""
    if not isinstance(phi_values, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in phi_values.items()
    ):
        raise DeidError("phi_values must map strings to kinds")
    keys = _index(resources)
    pseudonyms = _pseudonyms(patient_keys, vault)

    patient_order = [source_id for resource_type, source_id in keys if resource_type == "Patient"]
    for source_id in patient_order:
        if source_id not in pseudonyms:
            raise DeidError("a Patient resource has no entry in patient_keys")
    if len({pseudonyms[source_id] for source_id in patient_order}) != len(patient_order):
        raise DeidError("two Patient resources of one message have the same identifier")
    # Patients emitted in this message first, then patients only referred to by it.
    patient_order += [source_id for source_id in pseudonyms if source_id not in patient_order]
    patients = tuple(dict.fromkeys(pseudonyms[source_id] for source_id in patient_order))
    first_patient = patients[0] if patients else None

    owners: list[str | None] = []
    for (resource_type, source_id), resource in zip(keys, resources, strict=True):
        if resource_type == "Patient":
            owners.append(pseudonyms[source_id])
            continue
        linked = _patient_link(resource)
        if linked is None:
            owners.append(first_patient)
        elif linked in pseudonyms:
            owners.append(pseudonyms[linked])
        else:
            # Attributing it to another patient would be wrong, keeping it unkeyed unsafe.
            raise DeidError(f"{resource_type} refers to a patient that has no entry in patient_keys")

    # Patients in patient_keys are targets even when not emitted: their id is the pseudonym.
    targets: dict[tuple[str, str], str] = {("Patient", sid): pseudonyms[sid] for sid in pseudonyms}
    for (resource_type, source_id), owner in zip(keys, owners, strict=True):
        if resource_type != "Patient":
            targets[(resource_type, source_id)] = vault.resource_id(owner, resource_type, source_id)

    scrubber = Scrubber(phi_values)
    out: list[DeidentifiedResource] = []
    for i, ((resource_type, source_id), owner, resource) in enumerate(
        zip(keys, owners, resources, strict=True)
    ):
        ctx = _Context(scrubber, targets, vault.date_shift_days(owner) if owner else None, vault)
        body = _object(resource, RESOURCES[resource_type], ctx, f"resources[{i}] {resource_type}") or {}
        new: dict[str, Any] = {
            "resourceType": resource_type,
            "id": targets[(resource_type, source_id)],
            "meta": _with_security_label(body.pop("meta", None)),
        }
        if resource_type in PSEUDONYM_IDENTIFIER_TYPES and owner is not None:
            new["identifier"] = [{"system": PSEUDONYM_SYSTEM, "value": owner}]
        new.update(body)
        if resource_type == "Patient" and "birthDate" in new:
            pooled = pooled_birth_year(resource.get("birthDate"), today or date.today())
            if pooled is not None:
                new["birthDate"] = pooled
        out.append(DeidentifiedResource(new, owner))

    check_no_leak([r.resource for r in out], phi_values)
    for i, item in enumerate(out):
        try:
            validate_resource(item.resource)
        except FhirValidationError as exc:
            # The reason names paths and error kinds only (see core.fhir).
            raise DeidError(f"resources[{i}]: de-identified output does not validate: {exc}") from exc
    return DeidResult(out, patients)
