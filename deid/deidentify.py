"""Identified FHIR resources of one message -> de-identified resources.

The walk is driven entirely by ``policy``: for each resource it builds a new dict from
the allowed elements only, so nothing is copied by default and the input is never
touched. Ids are replaced by keyed ones, references are rewritten to them (or dropped),
dates are shifted per patient and free text is scrubbed. The output is then checked for
leaks (and validated, when asked) before it is returned; any doubt raises DeidError.

The policy is turned once into plans (``_Field``: what to do with each element), and an
error's path is joined only when one is raised, on the way out of the walk.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

from core.errors import DeidError
from core.fhir import FhirValidationError, validate_resource

from .budget import Budget
from .dates import shift_fhir_date
from .dicom.values import uid_hash
from .leak import check_no_leak
from .policy import (
    ABSENT_REFERENCE,
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
    resource: dict[str, Any]  # de-identified FHIR JSON (validated when deidentify was asked to)
    patient: str | None  # pseudonym of the patient it belongs to


@dataclass(frozen=True)
class DeidResult:
    resources: list[DeidentifiedResource]
    patients: tuple[str, ...]  # pseudonyms of the patients in the message, in order


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


def _keyed_uid(value: Any, type_name: str, vault: Vault) -> str | None:
    if not isinstance(value, str):
        raise _Fail("expected a UID string")
    prefix = _OID_PREFIX if type_name == "dicomOid" else ""
    if not value.startswith(prefix):
        return None
    uid = value[len(prefix) :]
    if len(uid) > 64 or not _DICOM_UID.fullmatch(uid):
        return None
    return prefix + uid_hash(vault, uid)


class _Fail(Exception):
    """A walk error; the elements it is in are added on the way out (innermost first)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause
        self.where: list[str] = []


# What the walk does with an element, decided once per policy entry.
_REF, _OBJECT, _UID, _TEXT, _DATE, _KEEP, _UNKNOWN = range(7)
_MANY, _STR, _TEXT_STR, _DICT, _OTHER = range(5)


class _Field:
    __slots__ = ("bool_ok", "expected", "many", "mode", "name", "op", "plan", "type")

    def __init__(self, name: str, element: Element) -> None:
        self.name, self.many, self.type = name, element.many, element.type
        # The same precedence as the type tests of the walk it replaced.
        if element.type == REFERENCE:
            self.op = _REF
        elif element.type in COMPLEX:
            self.op = _OBJECT
        elif element.type in UID_PRIMITIVES:
            self.op = _UID
        elif element.type in TEXT_PRIMITIVES:
            self.op = _TEXT
        elif element.type in DATE_PRIMITIVES:
            self.op = _DATE
        elif element.type in KEEP_PRIMITIVES:
            self.op = _KEEP
        else:
            self.op = _UNKNOWN
        self.expected = _JSON_TYPES.get(element.type, (str,))
        self.bool_ok = bool in self.expected
        # Which fast case of _Walk.object applies (a string kept as it is, a text, an object).
        if self.many:
            self.mode = _MANY
        elif self.op == _KEEP and not self.bool_ok and str in self.expected:
            self.mode = _STR
        elif self.op == _TEXT:
            self.mode = _TEXT_STR
        elif self.op == _OBJECT:
            self.mode = _DICT
        else:
            self.mode = _OTHER
        self.plan = _Plan(())


class _Plan:
    """The fields of a resource or complex type, in policy order."""

    __slots__ = ("fields",)

    def __init__(self, fields: tuple[_Field, ...]) -> None:
        self.fields = fields


def _plans() -> dict[str, _Plan]:
    """The plan of each resource type (its complex types' plans linked in)."""
    complex_plans = {name: _Plan(tuple(_Field(n, e) for n, e in f.items())) for name, f in COMPLEX.items()}
    resource_plans = {name: _Plan(tuple(_Field(n, e) for n, e in f.items())) for name, f in RESOURCES.items()}
    for plan in (*complex_plans.values(), *resource_plans.values()):
        for field in plan.fields:
            if field.op == _OBJECT:
                field.plan = complex_plans[field.type]
    return resource_plans


_RESOURCE_PLANS = _plans()


class _Walk:
    """The de-identification of the resources of one message (one scrubber, one set of
    targets); ``days`` is set per resource to its patient's shift (None: no patient).

    Texts, dates and references recur within a message (units, times, the subject), so
    their results are kept for the message: the same input gives the same output."""

    __slots__ = ("_dates", "_refs", "_texts", "budget", "days", "scrubber", "targets", "vault")

    def __init__(
        self,
        scrubber: Scrubber,
        targets: Mapping[tuple[str, str], str],
        vault: Vault,
        budget: Budget | None = None,
    ) -> None:
        self.scrubber = scrubber
        self.budget = budget  # the message's cost bound: each new text is admitted to it
        self.targets = targets  # (resource type, source id) -> new id
        self.vault = vault  # keys DICOM UIDs exactly as deid.dicom does
        self.days: int | None = None
        self._texts: dict[tuple[str, int | None], str | None] = {}
        self._dates: dict[tuple[str, int], str] = {}
        self._refs: dict[str, dict[str, str] | None] = {}

    def object(self, value: Any, plan: _Plan) -> dict[str, Any] | None:
        # type() first: isinstance against the Mapping ABC is slow, and JSON has dicts.
        if type(value) is not dict and not isinstance(value, Mapping):
            raise _Fail("expected an object")
        out: dict[str, Any] = {}
        texts, days = self._texts, self.days
        for field in plan.fields:
            name = field.name
            if name not in value:
                continue
            item = value[name]
            mode = field.mode
            kept: Any
            try:
                # The common cases first, each an exact type that cannot be a list or None.
                if mode == _STR and type(item) is str:
                    kept = item  # a code or uri: what value() would check and return
                elif mode == _TEXT_STR and type(item) is str and (item, days) in texts:
                    kept = texts[(item, days)]  # a text seen before in this message
                elif mode == _DICT and type(item) is dict:
                    kept = self.object(item, field.plan)
                elif mode == _MANY:
                    kept = self.items(item, field)
                elif isinstance(item, list):
                    raise _Fail("expected a single value, not a list")
                elif item is None:
                    continue
                else:
                    kept = self.value(item, field)
            except _Fail as exc:
                exc.where.append("." + name)
                raise
            # Kept unless None, "" or {} (what the walk this replaced tested, by type first).
            kind = type(kept)
            if kind is str or kind is dict:
                if kept:
                    out[name] = kept
            elif kind is list or (kept is not None and kept != "" and kept != {}):
                out[name] = kept
        # FHIR forbids empty objects, so an object with nothing left goes entirely.
        return out or None

    def items(self, value: Any, field: _Field) -> list[Any] | None:
        if not isinstance(value, list):
            raise _Fail("expected a list")
        kept = []
        objects = field.op == _OBJECT
        for i, item in enumerate(value):
            if item is None:
                continue
            try:
                one = self.object(item, field.plan) if objects else self.value(item, field)
            except _Fail as exc:
                exc.where.append(f"[{i}]")
                raise
            if one is not None:
                kept.append(one)
        return kept or None

    def value(self, value: Any, field: _Field) -> Any:
        """The de-identified form of one value (not None), or None if nothing of it may stay."""
        op = field.op
        if op == _TEXT:
            return self.text(value)
        if op == _KEEP:
            if isinstance(value, bool) != field.bool_ok or not isinstance(value, field.expected):
                raise _Fail(f"unexpected JSON type for {field.type}")
            return value
        if op == _DATE:
            return self.date(value)
        if op == _REF:
            return self.reference(value)
        if op == _OBJECT:
            return self.object(value, field.plan)
        if op == _UID:
            return _keyed_uid(value, field.type, self.vault)
        raise _Fail(f"policy names unknown type {field.type}")

    def text(self, value: Any) -> str | None:
        if type(value) is not str and not isinstance(value, str):
            raise _Fail("expected a string")
        key = (value, self.days)
        try:
            return self._texts[key]
        except KeyError:
            pass
        scrubbed = self.scrubber.scrub(value, self.days, self.budget)
        kept = self._texts[key] = scrubbed if scrubbed.strip() else None
        return kept

    def date(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _Fail("expected a date string")
        days = self.days
        if days is None:
            raise _Fail("no patient to key a date shift")
        key = (value, days)
        shifted = self._dates.get(key)
        if shifted is None:
            try:
                shifted = self._dates[key] = shift_fhir_date(value, days)
            except ValueError as exc:
                raise _Fail(str(exc), exc) from exc
        return shifted

    def reference(self, value: Any) -> dict[str, str] | None:
        if type(value) is not dict and not isinstance(value, Mapping):
            raise _Fail("expected a Reference object")
        ref = value.get("reference")
        # Identifier-only and display-only references are dropped: a display is often a name.
        if not isinstance(ref, str):
            return _absent_reference() if value == _ABSENT_REFERENCE else None
        if ref in self._refs:
            kept = self._refs[ref]
        else:
            kept = self._refs[ref] = _reference(ref, self.targets)
        return dict(kept) if kept is not None else None


def _absent_reference() -> dict[str, Any]:
    """A fresh copy of the policy's ABSENT_REFERENCE, as JSON."""
    return {"extension": [dict(item) for item in ABSENT_REFERENCE["extension"]]}


_ABSENT_REFERENCE: Final = _absent_reference()


def _reference(ref: str, targets: Mapping[tuple[str, str], str]) -> dict[str, str] | None:
    if (match := _REFERENCE.fullmatch(ref.strip())) is None:
        return None
    new_id = targets.get((match["type"], match["id"]))
    return {"reference": f"{match['type']}/{new_id}"} if new_id else None


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
    seen: set[tuple[str, str]] = set()  # a list scan per resource was quadratic in their number
    for i, resource in enumerate(resources):
        if not isinstance(resource, Mapping):
            raise DeidError(f"resources[{i}] is not an object")
        resource_type, source_id = resource.get("resourceType"), resource.get("id")
        if not isinstance(resource_type, str) or resource_type not in RESOURCES:
            raise DeidError(f"resources[{i}]: no de-identification policy for {_safe_type(resource_type)}")
        if not isinstance(source_id, str) or not source_id:
            raise DeidError(f"resources[{i}] {resource_type} has no id")
        if (resource_type, source_id) in seen:
            raise DeidError(f"resources[{i}] {resource_type}: duplicate id in one message")
        seen.add((resource_type, source_id))
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
    validate: bool = False,
    budget: Budget | None = None,
) -> DeidResult:
    """De-identify the resources of one message; raises DeidError if it cannot do so safely.

    ``today``: the day ages are counted to (tests pin it; default: the current date).
    ``validate``: also validate every output resource against the FHIR models.
    ``budget``: the message's cost bound (deid.budget); over it, ``OverBudget`` is raised
    (a DeidError) before the message's text has been scrubbed for longer than that."""
    if not isinstance(phi_values, Mapping) or (
        # All plain strings, told at C speed; anything else is checked item by item.
        not {*map(type, phi_values), *map(type, phi_values.values())} <= {str}
        and not all(isinstance(k, str) and isinstance(v, str) for k, v in phi_values.items())
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
    emitted = set(patient_order)
    patient_order += [source_id for source_id in pseudonyms if source_id not in emitted]
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

    walk = _Walk(Scrubber(phi_values), targets, vault, budget)
    shifts: dict[str, int] = {}
    out: list[DeidentifiedResource] = []
    for i, ((resource_type, source_id), owner, resource) in enumerate(
        zip(keys, owners, resources, strict=True)
    ):
        if owner:
            if owner not in shifts:
                shifts[owner] = vault.date_shift_days(owner)
            walk.days = shifts[owner]
        else:
            walk.days = None
        try:
            body = walk.object(resource, _RESOURCE_PLANS[resource_type]) or {}
        except _Fail as exc:
            where = "".join(reversed(exc.where))
            raise DeidError(f"resources[{i}] {resource_type}{where}: {exc.message}") from exc.cause
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

    check_no_leak([r.resource for r in out], phi_values, budget=budget)
    for i, item in enumerate(out if validate else ()):
        try:
            validate_resource(item.resource)
        except FhirValidationError as exc:
            # The reason names paths and error kinds only (see core.fhir).
            raise DeidError(f"resources[{i}]: de-identified output does not validate: {exc}") from exc
    return DeidResult(out, patients)
