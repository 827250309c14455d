"""The fast paths of deid give exactly what the straightforward implementation gave.

The pre-checks (deid.prefilter), the per-value and per-text caches, the planned walk of
deidentify and the one-pass leak check must change nothing: not a character of any
output, id or order, and not the type or text of any error. The implementation they
replaced is kept below as the reference and compared with them on the planted-identifier
corpus, the shared HL7 corpus, the synthetic hospital's feed (with each patient's known
values growing as the pipeline's do), those messages' resources mutated at random, and
texts made of the messages' own values in odd case, spacing and characters.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest

from connectors.hl7 import decode_message
from core.errors import DeidError, IdentifierLeak
from core.fhir import FhirValidationError, validate_resource
from deid import Vault, check_no_leak, deidentify, names, phi
from deid.dates import (
    TEXT_DATE_PATTERNS,
    LooseDate,
    is_fhir_date,
    parse_loose_date,
    shift_fhir_date,
    text_date,
    written_forms,
)
from deid.deidentify import (
    _DICOM_UID,
    _JSON_TYPES,
    _OID_PREFIX,
    _REFERENCE,
    DeidentifiedResource,
    DeidResult,
    _index,
    _patient_link,
    _pseudonyms,
    _with_security_label,
    pooled_birth_year,
)
from deid.dicom.values import uid_hash
from deid.leak import (
    _DIGIT_RUN,
    _MAX_REPORTED,
    _MIN_DIGITS_FOR_RUNS,
    _MIN_NUMERIC_DIGITS,
    _MIN_SIGNIFICANCE,
    _NUMERIC_KINDS,
    _OUTPUT_DATE_SHAPE,
    _POLICY_ELEMENT_NAMES,
    _SAFE_KEY,
    _STRUCTURAL_KEYS,
    _TOKEN_KEYS,
)
from deid.phi import _NAME_SPLIT, _is_wide
from deid.policy import (
    ABSENT_REFERENCE,
    COMPLEX,
    DATE_PRIMITIVES,
    KEEP_PRIMITIVES,
    PHI_KINDS,
    PLACEHOLDERS,
    PSEUDONYM_IDENTIFIER_TYPES,
    PSEUDONYM_SYSTEM,
    REFERENCE,
    RESOURCES,
    TEXT_PRIMITIVES,
    UID_PRIMITIVES,
    Element,
)
from deid.scrub import (
    _ADDRESS_PATTERNS,
    _CJK_TITLES,
    _CLINICAL_INITIALS,
    _CN_MOBILE,
    _DECIMAL,
    _EMAIL,
    _FAMILIAR_WORDS,
    _GIVEN_BEFORE_NAME,
    _ID_LABEL,
    _INITIAL_CUE,
    _IP_PLACEHOLDER,
    _IPV4,
    _IPV6_CANDIDATE,
    _MIN_LABELLED_ID_DIGITS,
    _NUMBER_RUN,
    _PHONE_DIGITS,
    _RESIDENT_ID,
    _SENTINEL_BASE,
    _SENTINELS,
    _SSN,
    _URL,
    Scrubber,
    _is_ipv6,
    _Parked,
    _replace_group,
    _replace_spans,
    _url_repl,
    _worth_scrubbing,
)
from mapping import MappingOptions, map_message
from sidecar import hospital
from tests.corpus import corpus_files, split_messages
from tests.fixtures.planted import corpus as planted_corpus

# ================================================================ the reference
# deid as it was before the fast paths (commit e8a71d2): the straightforward
# implementation, one regular expression after the other. Only what the fast paths
# replaced is copied; helpers they left alone are imported from deid.


def ref_variants(phi_values: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    for raw, kind in phi_values.items():
        if kind not in PHI_KINDS:
            raise DeidError("phi_values holds a kind outside PHI_KINDS")
        value = " ".join(phi.normalise_text(raw).split())
        candidates = [value]
        if kind == "NAME":
            parts = [part for part in _NAME_SPLIT.split(value) if part]
            candidates += parts
            if len(parts) > 1 and all(_is_wide(c) for c in "".join(parts)):
                candidates.append("".join(parts))
        for candidate in candidates:
            if candidate and (candidate.casefold(), kind) not in seen:
                seen.add((candidate.casefold(), kind))
                yield candidate, kind


def ref_cjk(value: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in value)


def ref_known_surnames(phi_values: Mapping[str, str]) -> set[str]:
    compound, single = names.chinese_surnames()
    found: set[str] = set()
    for raw, kind in phi_values.items():
        family, comma, _ = phi.normalise_text(raw).partition(",")
        if kind == "NAME" and comma and 1 <= len(family.strip()) <= 2 and ref_cjk(family):
            found.add(family.strip())
    for value, kind in ref_variants(phi_values):
        if kind != "NAME" or not ref_cjk(value):
            continue
        for part in re.split(r"[\s,]+", value):
            if not part or not ref_cjk(part):
                continue
            if part in compound or part in single:
                found.add(part)
            elif len(part) >= 3 and part[:2] in compound:
                found.add(part[:2])
            elif len(part) >= 2 and part[0] in single and len(part) <= 3:
                found.add(part[0])
    return found


def ref_latin_name_parts(phi_values: Mapping[str, str]) -> set[tuple[str, str, str]]:
    triples: set[tuple[str, str, str]] = set()
    names_seen = [phi.normalise_text(v) for v, k in phi_values.items() if k == "NAME"]
    full = {" ".join(v.split()).casefold() for v in names_seen}
    for value in names_seen:
        if "," not in value or ref_cjk(value):
            continue
        family, _, given = (p.strip() for p in value.partition(","))
        if not re.fullmatch(r"[A-Za-z][A-Za-z'\-]*(?: [A-Za-z][A-Za-z'\-]*)*", family + " " + given):
            continue
        middle = ""
        for candidate in full:
            parts = candidate.split()
            if len(parts) == 3 and parts[0] == given.casefold() and parts[2] == family.casefold():
                middle = parts[1]
        triples.add((family, given, middle))
    return triples


@functools.lru_cache(maxsize=4096)
def ref_date_rule(day: date) -> re.Pattern[str]:
    forms = written_forms(day)
    bodies = [
        r"\s*".join(re.escape(part) for part in form.split()) for form in sorted(forms, key=len, reverse=True)
    ]
    return re.compile(rf"(?<![0-9A-Za-z])(?:{'|'.join(bodies)})(?![0-9A-Za-z])", re.IGNORECASE)


def ref_derived_rules(
    phi_values: Mapping[str, str],
) -> Iterator[tuple[re.Pattern[str], str, LooseDate | None]]:
    days = set()
    for value, kind in ref_variants(phi_values):
        if kind == "DATE" and (date_ := parse_loose_date(value)) is not None and date_.precision == "day":
            days.add(date_.day)
    for day in sorted(days):
        yield ref_date_rule(day), "DATE", LooseDate(day, "day")
    for family, given, middle in ref_latin_name_parts(phi_values):
        g, f = given[0].upper(), family[0].upper()
        fam = re.escape(family)
        yield re.compile(rf"(?<![A-Za-z]){g}\.?[ \t]*{fam}(?![A-Za-z])", re.IGNORECASE), "NAME", None
        yield re.compile(rf"(?<![A-Za-z]){fam},?[ \t]+{g}\.?(?![A-Za-z])", re.IGNORECASE), "NAME", None
        initials = [g + f] + ([g + middle[0].upper() + f] if middle else [])
        for ini in initials:
            dotted = r"\.[ \t]?".join(ini) + r"\."
            yield re.compile(rf"(?<![A-Za-z]){dotted}"), "NAME", None
            if len(ini) >= 3 and ini not in _CLINICAL_INITIALS:
                yield re.compile(rf"(?<![A-Za-z]){ini}(?![A-Za-z])"), "NAME", None
            elif ini not in _CLINICAL_INITIALS:
                yield re.compile(rf"{_INITIAL_CUE}(?P<x>{ini})(?![A-Za-z])"), "NAME", None
    surnames = sorted(ref_known_surnames(phi_values), key=lambda x: (-len(x), x))
    if surnames:
        alternatives = "|".join(map(re.escape, surnames))
        titles = "|".join(map(re.escape, _CJK_TITLES))
        yield re.compile(rf"(?:{alternatives})(?:{titles})(?![日时地院处年月天种些])"), "NAME", None
        familiar = [p + s for s in surnames if len(s) == 1 for p in "老小阿" if p + s not in _FAMILIAR_WORDS]
        if familiar:
            yield re.compile(rf"(?:{'|'.join(familiar)})(?![\d.])"), "NAME", None


@dataclass(frozen=True)
class RefRule:
    length: int
    pattern: re.Pattern[str] | phi.ValuePattern
    kind: str
    date: LooseDate | None


class RefScrubber:
    def __init__(self, phi_values: Mapping[str, str]) -> None:
        rules: list[RefRule] = []
        for value, kind in ref_variants(phi_values):
            date_ = parse_loose_date(value) if kind == "DATE" else None
            if _worth_scrubbing(value, kind, date_):
                known = phi.value_pattern(value, bound_digits=kind == "DATE")
                rules.append(RefRule(len(value), known, kind, date_))
        for derived, kind, date_ in ref_derived_rules(phi_values):
            rules.append(RefRule(len(derived.pattern), derived, kind, date_))
        rules.sort(key=lambda r: (-r.length, r.pattern.pattern, r.kind))
        self._rules = tuple(dict.fromkeys(rules))
        self._surnames = frozenset(ref_known_surnames(phi_values))
        self._cjk_names = frozenset(
            value
            for value, kind in ref_variants(phi_values)
            if kind == "NAME" and ref_cjk(value) and " " not in value
        )

    def scrub(self, text: str, days: int | None) -> str:
        """``text`` without identifiers; dates shifted by ``days`` (or "[DATE]" if None)."""
        text = _SENTINELS.sub("", phi.normalise_text(text))
        parked = _Parked()

        def fixed(replacement: str) -> Callable[[re.Match[str]], str]:
            return lambda _match: parked.park(replacement)

        def in_group(replacement: str) -> Callable[[re.Match[str]], str]:
            # Only group "x" is the value; the rest of the match was the cue before it.
            return lambda match: _replace_group(match, "x", parked.park(replacement))

        def shifted(date: LooseDate | None) -> str:
            if date is None or days is None:
                return PLACEHOLDERS["DATE"]
            return date.shifted(days)

        # The unambiguous shapes go first, so a reported MRN found inside a mobile number
        # or resident id does not leave the rest of that number behind.
        text = _URL.sub(lambda m: _url_repl(m, parked), text)
        text = _EMAIL.sub(fixed(PLACEHOLDERS["EMAIL"]), text)
        text = _IPV6_CANDIDATE.sub(
            lambda m: parked.park(_IP_PLACEHOLDER) if _is_ipv6(m.group()) else m.group(), text
        )
        text = _IPV4.sub(fixed(_IP_PLACEHOLDER), text)
        text = _RESIDENT_ID.sub(fixed(PLACEHOLDERS["ID"]), text)
        text = _SSN.sub(fixed(PLACEHOLDERS["ID"]), text)
        text = _CN_MOBILE.sub(fixed(PLACEHOLDERS["PHONE"]), text)
        text = _replace_spans(text, names.known_surname_names(text, self._surnames, self._cjk_names), parked)
        for rule in self._rules:
            replacement = shifted(rule.date) if rule.kind == "DATE" else PLACEHOLDERS[rule.kind]
            repl = in_group if "x" in rule.pattern.groupindex else fixed
            text = rule.pattern.sub(repl(replacement), text)

        def labelled_id(match: re.Match[str]) -> str:
            if phi.digit_count(match["id"]) < _MIN_LABELLED_ID_DIGITS:
                return match.group()
            return _replace_group(match, "id", parked.park(PLACEHOLDERS["ID"]))

        text = _ID_LABEL.sub(labelled_id, text)

        def text_date_repl(match: re.Match[str]) -> str:
            date = text_date(match)
            return match.group() if date is None else parked.park(shifted(date))

        for pattern in TEXT_DATE_PATTERNS:
            text = pattern.sub(text_date_repl, text)

        for pattern in _ADDRESS_PATTERNS:
            text = pattern.sub(
                lambda m: _replace_group(m, "addr", parked.park(PLACEHOLDERS["ADDRESS"])), text
            )

        # A capitalised word right before a known name is its given name ("daughter Kwame
        # Okonkwo" where only Okonkwo was reported); placeholders are single sentinels.
        def given_before(match: re.Match[str]) -> str:
            placeholder = match.group(2)
            if parked.parts[ord(placeholder) - _SENTINEL_BASE] != PLACEHOLDERS["NAME"]:
                return match.group()
            if match.group(1).casefold() in names.NOT_GIVEN:
                return match.group()
            return parked.park(PLACEHOLDERS["NAME"]) + match.group()[len(match.group(1)) :]

        text = _GIVEN_BEFORE_NAME.sub(given_before, text)

        text = _replace_spans(text, names.find_names(text, self._surnames), parked)

        def number_repl(match: re.Match[str]) -> str:
            if _DECIMAL.fullmatch(match.group()):
                return match.group()
            digits = phi.digit_count(match.group())
            if digits in _PHONE_DIGITS:
                return parked.park(PLACEHOLDERS["PHONE"])
            if digits > _PHONE_DIGITS.stop - 1:
                return parked.park(PLACEHOLDERS["ID"])
            return match.group()

        text = _NUMBER_RUN.sub(number_repl, text)
        return parked.restore(text)


@dataclass(frozen=True)
class RefNeedle:
    kind: str
    casefolded: str
    pattern: phi.ValuePattern
    digits: str  # compared against digit runs when not empty


def ref_needles(phi_values: Mapping[str, str]) -> list[RefNeedle]:
    needles = []
    for value, kind in ref_variants(phi_values):
        if kind == "DATE" and (date := parse_loose_date(value)) is not None and date.precision == "year":
            continue  # a year is not identifying, and every date of that year contains it
        if kind == "DATE" and _OUTPUT_DATE_SHAPE.fullmatch(value):
            # De-identified text holds shifted dates in exactly this shape, and a shifted date
            # may equal another real date of the same message (two dates one offset apart).
            # Such values are still scrubbed; the raw HL7 forms are what is checked here.
            continue
        digits = "".join(re.findall(r"\d", value))
        numeric = kind in _NUMERIC_KINDS and len(digits) >= _MIN_NUMERIC_DIGITS
        if phi.significance(value) < _MIN_SIGNIFICANCE and not numeric:
            continue
        needles.append(
            RefNeedle(
                kind=kind,
                casefolded=value.casefold(),
                pattern=phi.value_pattern(value, bound_digits=True),
                digits=digits if numeric and len(digits) >= _MIN_DIGITS_FOR_RUNS else "",
            )
        )
    return needles


def ref_digit_runs(text: str) -> list[str]:
    return [re.sub(r"\D", "", run.group()) for run in _DIGIT_RUN.finditer(text)]


def ref_hits_text(needle: RefNeedle, text: str, runs: list[str] | None = None) -> bool:
    if needle.pattern.search(text):
        return True
    if needle.digits:
        return any(needle.digits in run for run in (ref_digit_runs(text) if runs is None else runs))
    return False


def ref_hits_token(needle: RefNeedle, token: str) -> bool:
    # Ids and references are generated; a chance substring of a hex digest is not a leak,
    # but an id or reference segment that *is* a reported value is.
    segments = token.split("/")
    # "Patient/<id>": the type segment is vocabulary; only the id segments can leak.
    for segment in segments[1:] if len(segments) > 1 else segments:
        if segment.casefold() == needle.casefolded:
            return True
        if needle.digits and segment.isdigit() and segment == needle.digits:
            return True
    return False


def ref_leaves(
    node: Any, path: str, parent: Mapping[str, Any] | None, key: str
) -> Iterator[tuple[str, str, str]]:
    """(path, key-or-value text, mode) for everything the serialised JSON would contain."""
    if isinstance(node, Mapping):
        for child_key, child in node.items():
            child_key = str(child_key)
            # Element names the policy allows are vocabulary, not data: checking them made a
            # patient literally named "Patient" fail on `patient`. Any other key is checked.
            if child_key not in _POLICY_ELEMENT_NAMES:
                yield f"{path}.{child_key}", phi.normalise_text(child_key), "key"
            yield from ref_leaves(child, f"{path}.{child_key}", node, child_key)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from ref_leaves(item, f"{path}[{i}]", parent, key)
    elif isinstance(node, str):
        is_pseudonym = key == "value" and parent is not None and parent.get("system") == PSEUDONYM_SYSTEM
        if key in _STRUCTURAL_KEYS:
            return
        if key in _TOKEN_KEYS or is_pseudonym:
            yield path, node, "token"
        # A full date value holds no name, and its digits are no id; a bare "4711" is
        # date-shaped too, so only values with a month are let through unchecked.
        elif not (is_fhir_date(node) and "-" in node):
            yield path, phi.normalise_text(node), "text"
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield path, str(node), "text"


def ref_safe_path(path: str, needles: list[RefNeedle]) -> str:
    # Element names are safe to report; anything else in the path might itself be the value.
    def safe(part: str) -> bool:
        if not part or part == "." or re.fullmatch(r"\[\d+\]", part):
            return True
        return _SAFE_KEY.fullmatch(part) is not None and not any(ref_hits_text(n, part) for n in needles)

    return "".join(part if safe(part) else "?" for part in re.split(r"(\.|\[\d+\])", path))


def ref_check_no_leak(resources: list[dict[str, Any]], phi_values: dict[str, str]) -> None:
    """Raise IdentifierLeak if any phi value occurs in ``resources``.

    Values are compared after NFKC and case folding; values of kind ID or PHONE with
    seven or more digits are also compared digits-only against digit runs, so
    "555 123 4567" still matches "(555) 123-4567".
    """
    needles = ref_needles(phi_values)
    if not needles:
        return
    findings: set[tuple[str, str]] = set()
    for index, resource in enumerate(resources):
        resource_type = resource.get("resourceType") if isinstance(resource, Mapping) else None
        root = resource_type if isinstance(resource_type, str) else "Resource"
        for path, text, mode in ref_leaves(resource, root, None, ""):
            runs = ref_digit_runs(text) if mode != "token" and any(n.digits for n in needles) else []
            for needle in needles:
                hit = ref_hits_token(needle, text) if mode == "token" else ref_hits_text(needle, text, runs)
                if hit:
                    findings.add((needle.kind, f"resources[{index}] {ref_safe_path(path, needles)}"))
    if findings:
        ordered = sorted(findings, key=lambda f: (f[1], f[0]))
        shown = "; ".join(f"{kind} in {where}" for kind, where in ordered[:_MAX_REPORTED])
        more = f"; and {len(ordered) - _MAX_REPORTED} more" if len(ordered) > _MAX_REPORTED else ""
        kinds = ", ".join(sorted({kind for kind, _ in findings}))
        raise IdentifierLeak(f"identifier leak ({kinds}): {shown}{more}")


@dataclass(frozen=True)
class RefContext:
    scrubber: RefScrubber
    targets: Mapping[tuple[str, str], str]  # (resource type, source id) -> new id
    days: int | None  # the owning patient's date shift; None if the message has no patient
    vault: Vault  # keys DICOM UIDs exactly as deid.dicom does


def ref_keyed_uid(value: Any, type_name: str, ctx: RefContext, path: str) -> str | None:
    if not isinstance(value, str):
        raise DeidError(f"{path}: expected a UID string")
    prefix = _OID_PREFIX if type_name == "dicomOid" else ""
    if not value.startswith(prefix):
        return None
    uid = value[len(prefix) :]
    if len(uid) > 64 or not _DICOM_UID.fullmatch(uid):
        return None
    return prefix + uid_hash(ctx.vault, uid)


def ref_primitive(value: Any, type_name: str, ctx: RefContext, path: str) -> Any:
    if type_name in UID_PRIMITIVES:
        return ref_keyed_uid(value, type_name, ctx, path)
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


def ref_reference(value: Any, ctx: RefContext, path: str) -> dict[str, str] | None:
    if not isinstance(value, Mapping):
        raise DeidError(f"{path}: expected a Reference object")
    ref = value.get("reference")
    # A reference saying only that its target is unknown names nothing and is kept.
    if value == {"extension": [dict(e) for e in ABSENT_REFERENCE["extension"]]}:
        return {"extension": [dict(e) for e in value["extension"]]}  # type: ignore[dict-item]
    # Identifier-only and display-only references are dropped: a display is often a name.
    if not isinstance(ref, str) or (match := _REFERENCE.fullmatch(ref.strip())) is None:
        return None
    new_id = ctx.targets.get((match["type"], match["id"]))
    return {"reference": f"{match['type']}/{new_id}"} if new_id else None


def ref_value(value: Any, type_name: str, ctx: RefContext, path: str) -> Any:
    """The de-identified form of one value, or None if nothing of it may stay."""
    if value is None:
        return None
    if type_name == REFERENCE:
        return ref_reference(value, ctx, path)
    if type_name in COMPLEX:
        return ref_object(value, COMPLEX[type_name], ctx, path)
    if type_name in KEEP_PRIMITIVES | TEXT_PRIMITIVES | DATE_PRIMITIVES | UID_PRIMITIVES:
        return ref_primitive(value, type_name, ctx, path)
    raise DeidError(f"{path}: policy names unknown type {type_name}")


def ref_element(value: Any, element: Element, ctx: RefContext, path: str) -> Any:
    if element.many:
        if not isinstance(value, list):
            raise DeidError(f"{path}: expected a list")
        kept = [ref_value(item, element.type, ctx, f"{path}[{i}]") for i, item in enumerate(value)]
        return [item for item in kept if item is not None] or None
    if isinstance(value, list):
        raise DeidError(f"{path}: expected a single value, not a list")
    return ref_value(value, element.type, ctx, path)


def ref_object(
    value: Any, fields: Mapping[str, Element], ctx: RefContext, path: str
) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        raise DeidError(f"{path}: expected an object")
    out: dict[str, Any] = {}
    for name, element in fields.items():
        if name in value:
            kept = ref_element(value[name], element, ctx, f"{path}.{name}")
            if kept is not None and kept != "" and kept != {}:
                out[name] = kept
    # FHIR forbids empty objects, so an object with nothing left goes entirely.
    return out or None


def ref_deidentify(
    resources: list[dict[str, Any]],
    patient_keys: dict[str, tuple[str, str]],
    phi_values: dict[str, str],
    vault: Vault,
    *,
    today: date | None = None,
    validate: bool = False,
) -> DeidResult:
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

    scrubber = RefScrubber(phi_values)
    out: list[DeidentifiedResource] = []
    for i, ((resource_type, source_id), owner, resource) in enumerate(
        zip(keys, owners, resources, strict=True)
    ):
        ctx = RefContext(scrubber, targets, vault.date_shift_days(owner) if owner else None, vault)
        body = ref_object(resource, RESOURCES[resource_type], ctx, f"resources[{i}] {resource_type}") or {}
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

    ref_check_no_leak([r.resource for r in out], phi_values)
    for i, item in enumerate(out if validate else ()):
        try:
            validate_resource(item.resource)
        except FhirValidationError as exc:
            # The reason names paths and error kinds only (see core.fhir).
            raise DeidError(f"resources[{i}]: de-identified output does not validate: {exc}") from exc
    return DeidResult(out, patients)


# ================================================================ the comparisons

_VAULT = Vault(b"equivalence-secret-0123456789abc")
_TODAY = date(2026, 12, 1)
_OPTIONS = MappingOptions(validate=False)
# What fuzzed texts are made of besides a message's own values: case and look-alike
# characters sre folds ("İ", "ſ", the Kelvin sign), placeholder sentinels, cues, dates.
_ODD = [
    "İ", "ſ", "\u212a", "ı", "Σ", "ς", "\U000f0001", "ﬅ", "\u3000", "\t", "  ", "Dr. ", "Mr ", "患者", "先生",
    "老", "小", "MRN: ", "DOB ", "/", "-", ".", ",", " born ", "某", "ｗ",
]  # fmt: skip
_PHRASES = [
    "Hemoglobin", "12.0-17.5", "seen by", "on 03/05/1969", "Jan 19, 1969", "19 Jan 1969", "J. Garcia",
    "G.D.", "DG", "pt DG", "1969年1月19日", "王先生", "老王", "(555) 748-2542", "call 555 748 2542",
    "mmol/L", "x", "http://example.org/a_(b)", "10.0.0.1", "2026-03-01",
]  # fmt: skip


@dataclass
class _Case:
    resources: list[dict[str, Any]]
    keys: dict[str, tuple[str, str]]
    phi_values: dict[str, str]
    texts: list[str]


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _case(text: str, known: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> _Case | None:
    try:
        mapped = map_message(text, _OPTIONS)
    except Exception:  # the mapper refuses some corpus messages; they have nothing to compare
        return None
    keys = {pid: (key.authority, key.value) for pid, key in mapped.patient_keys.items()}
    phi_values = (known or {}) | mapped.phi_values
    return _Case(mapped.resources, keys, phi_values, [*extra, *_strings(mapped.resources)])


def _feed_cases() -> Iterator[_Case]:
    # The synthetic hospital's feed, each message with what earlier ones said about its
    # patient (as worker.pipeline passes known | message values).
    known: dict[str, dict[str, str]] = {}
    for raw in hospital.feed(hospital.make_patients(45)):
        text = raw.decode()
        mrn = re.search(r"\|(MRN\d+)\^", text)
        patient = mrn.group(1) if mrn else ""
        case = _case(text, known.get(patient))
        if case is not None:
            yield case
            remembered = {v: k for v, k in case.phi_values.items() if k != "DATE"}
            known[patient] = known.get(patient, {}) | remembered


@functools.cache
def _cases() -> list[_Case]:
    cases = []
    for message in planted_corpus():
        case = _case(decode_message(message.raw, message.charset).text, extra=message.texts)
        if case is not None:
            cases.append(case)
    for path in corpus_files():
        for text in split_messages(path.read_text(encoding="utf-8", errors="replace")):
            case = _case(text)
            if case is not None:
                cases.append(case)
    cases += _feed_cases()
    return cases


def _outcome(run: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", run()
    except Exception as exc:  # the error is part of what must be the same
        return type(exc).__name__, (str(exc), type(exc.__cause__).__name__)


def _odd(value: str, rng: random.Random) -> str:
    out = []
    for char in value:
        roll = rng.random()
        if roll < 0.1:
            char = char.upper()
        elif roll < 0.2:
            char = char.lower()
        elif roll < 0.23:
            char = rng.choice(_ODD)
        out.append(char)
    return "".join(out)


def _fuzzed_texts(phi_values: Mapping[str, str], rng: random.Random, count: int) -> list[str]:
    values = list(phi_values) or ["John Smith"]
    # The message's dates as people write them (the scrubber knows every form).
    for value, kind in phi_values.items():
        parsed = parse_loose_date(value) if kind == "DATE" else None
        if parsed is not None and parsed.precision == "day":
            values += rng.sample(written_forms(parsed.day), 3)
    texts = []
    for _ in range(count):
        parts = [
            _odd(rng.choice(values), rng) if rng.random() < 0.5 else rng.choice(_ODD + _PHRASES)
            for _ in range(rng.randint(1, 5))
        ]
        texts.append(rng.choice([" ", "", ", ", "\n"]).join(parts))
    return texts


def test_the_corpora_are_there_and_large() -> None:
    cases = _cases()
    assert len(cases) >= 250
    assert sum(len(c.texts) for c in cases) >= 10_000


def _scrub(scrubber: Scrubber | RefScrubber, text: str, days: int | None) -> str:
    return scrubber.scrub(text, days)


def test_scrubber_gives_what_the_reference_gives() -> None:
    rng = random.Random(5)
    cases = _cases()
    all_texts = [text for case in cases for text in case.texts]
    compared = 0
    for case in cases:
        ours = _outcome(functools.partial(Scrubber, case.phi_values))
        theirs = _outcome(functools.partial(RefScrubber, case.phi_values))
        assert ours[0] == theirs[0]
        if ours[0] != "ok":
            assert ours == theirs
            continue
        # Its own texts, texts of its own values made odd, and other messages' texts (the
        # cache of texts that hold no known value is shared by all scrubbers).
        texts = case.texts + _fuzzed_texts(case.phi_values, rng, 15) + rng.sample(all_texts, 15)
        for text in texts:
            for days in (7, None, -30):
                a = _outcome(functools.partial(_scrub, ours[1], text, days))
                assert a == _outcome(functools.partial(_scrub, theirs[1], text, days)), (text, days)
                compared += 1
    assert compared >= 30_000


def _mutated(resources: list[dict[str, Any]], phi_values: Mapping[str, str], rng: random.Random) -> list[Any]:
    """``resources`` with values the message reported planted in its texts, elements of the
    wrong JSON shape, odd keys and the like, at random."""
    resources = copy.deepcopy(resources)
    values = list(phi_values) or ["x"]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in list(node):
                roll = rng.random()
                if key in ("resourceType", "id") and roll > 0.002:
                    continue
                if isinstance(node[key], str) and roll < 0.15:
                    node[key] = node[key] + " " + _odd(rng.choice(values), rng)
                elif roll < 0.006:
                    node[key] = rng.choice([12345, 3.5, True, None, {"a": 1}, [], "", "   "])
                elif roll < 0.01:
                    node[key] = [node[key]]
                else:
                    walk(node[key])
            if rng.random() < 0.04:
                node["note"] = [{"text": _odd(rng.choice(values), rng)}]
            if rng.random() < 0.02:
                node[_odd(rng.choice(values), rng)] = "x"
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(resources)
    return resources


def _deidentified(function: Callable[..., DeidResult], case: _Case, resources: Any, validate: bool) -> Any:
    out = function(
        copy.deepcopy(resources), case.keys, case.phi_values, _VAULT, today=_TODAY, validate=validate
    )
    return json.dumps([(x.resource, x.patient) for x in out.resources], ensure_ascii=False), out.patients


def test_deidentify_and_the_leak_check_give_what_the_reference_gives() -> None:
    rng = random.Random(7)
    outcomes: dict[str, int] = {}
    for case in _cases():
        for variant in range(3):
            resources = case.resources if variant == 0 else _mutated(case.resources, case.phi_values, rng)
            ours = _outcome(functools.partial(_deidentified, deidentify, case, resources, variant == 2))
            assert ours == _outcome(
                functools.partial(_deidentified, ref_deidentify, case, resources, variant == 2)
            )
            outcomes[ours[0]] = outcomes.get(ours[0], 0) + 1
            # The leak check alone: on resources full of what the message reported, on the
            # de-identified output, and on that output with a reported value planted in it.
            checked: list[Any] = [resources]
            if ours[0] == "ok":
                output = [resource for resource, _ in json.loads(ours[1][0])]
                checked += [output, _mutated(output, case.phi_values, rng)]
            for candidate in checked:
                leak = _outcome(functools.partial(check_no_leak, candidate, case.phi_values))
                assert leak == _outcome(functools.partial(ref_check_no_leak, candidate, case.phi_values))
                outcomes["leak " + leak[0]] = outcomes.get("leak " + leak[0], 0) + 1
    # Both ways through were taken often: clean output, refusals and leaks found.
    assert outcomes.get("ok", 0) >= 200 and outcomes.get("DeidError", 0) >= 20, outcomes
    assert outcomes.get("leak IdentifierLeak", 0) >= 200 and outcomes.get("leak ok", 0) >= 20, outcomes


_EDGE_TEXTS = [
    "John (x Smith and J.(.S. and J(S",
    "J. . Smith; JS",
    "a\U000f0000abc b \U000f0001yz",
    "其子王小明, 白细胞 3.5",
    "SMITH İSTANBUL Kelvin ſMITH",
    "born 12 Mar 1980, 03/12/80, MRN 4711, call 555 123 4567",
    "",
]


@pytest.mark.parametrize(
    "phi_values",
    [
        {"Smith, John": "NAME", "John (x Smith": "NAME"},  # a middle initial that is no literal
        {"Smith, John": "NAME", "John . Smith": "NAME"},
        {"\U000f0000abc": "NAME", "x\U000f0001yz": "ID"},  # values holding placeholder sentinels
        {"王, 芳": "NAME", "白细胞": "NAME"},
        {"ſmith": "NAME", "İstanbul": "ADDRESS", "\u212aelvin": "NAME"},
        {"19800312": "DATE", "1980": "DATE", "4711": "ID", "(555) 123-4567": "PHONE"},
        {"x-ray tech": "ROLE"},
        {},
    ],
)
def test_edge_values_scrub_and_check_as_before(phi_values: dict[str, str]) -> None:
    ours = _outcome(functools.partial(Scrubber, phi_values))
    theirs = _outcome(functools.partial(RefScrubber, phi_values))
    assert ours[0] == theirs[0]
    if ours[0] == "ok":
        for text in _EDGE_TEXTS:
            assert _outcome(functools.partial(_scrub, ours[1], text, 7)) == _outcome(
                functools.partial(_scrub, theirs[1], text, 7)
            )
    else:
        assert ours == theirs
    resources = [{"resourceType": "Observation", "id": "o", "valueString": text} for text in _EDGE_TEXTS]
    assert _outcome(functools.partial(check_no_leak, resources, phi_values)) == _outcome(
        functools.partial(ref_check_no_leak, resources, phi_values)
    )
