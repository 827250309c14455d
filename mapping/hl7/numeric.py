"""Numbers in results: NM, SN, units (OBX-6) and reference ranges (OBX-7) to FHIR.

Decimals become JSON numbers (int when written without a point, else float), so the
resources stay plain ``json.dumps``-able; trailing zeros ("4.00") are not preserved.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

from mapping import vocab
from mapping.hl7.datatypes import Json, clean_code, prune
from mapping.hl7.parse import Composite
from mapping.ucum import is_plausible_ucum

Number = int | float

POSITIVE_INT_MAX = 2**31 - 1
"""The largest FHIR integer, positiveInt and unsignedInt (32-bit signed)."""

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_COMPARATORS = {"<": "<", "<=": "<=", ">": ">", ">=": ">="}
_PREFIXED = re.compile(r"(?P<cmp><=|>=|<|>|=)?\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))")
_RANGE = re.compile(r"\(?\s*(?P<low>[+-]?\d+(?:\.\d+)?)\s*(?:-|–|to|_)\s*(?P<high>[+-]?\d+(?:\.\d+)?)\s*\)?")


@lru_cache(maxsize=4096)  # results repeat their values; an int or float out is immutable
def parse_number(text: str) -> Number | None:
    """An HL7 NM value as a JSON number; None when it is not one."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    if "." in text:
        value = float(text)
        return value if math.isfinite(value) else None
    try:
        return int(text)
    except ValueError:  # more digits than int() converts (sys.int_info): no measurement
        return None


def unit_parts(units: Composite) -> Json:
    """OBX-6 CWE -> the unit members of a Quantity (IG CWE[Quantity]).

    ``unit`` (text) is always kept; system/code are set for a plausible UCUM code, or for a
    unit that names another known coding system (e.g. MDC), never for a bare local text.
    """
    return dict(_unit_parts(*units.heads(3)))


@lru_cache(maxsize=1024)  # an OBX reads its units twice (value, range); feeds repeat them
def _unit_parts(raw_code: str, text: str, system_name: str) -> Json:
    code = clean_code(raw_code)
    parts: Json = {}
    unit = text or code
    if unit:
        parts["unit"] = unit
    if not code:
        return parts
    declared = vocab.coding_system(system_name) if system_name else None
    if declared and declared != vocab.UCUM and not declared.startswith("urn:id:"):
        parts["system"], parts["code"] = declared, code  # a registered unit system, e.g. MDC
    elif declared == vocab.UCUM or is_plausible_ucum(code):
        parts["system"], parts["code"] = vocab.UCUM, code
    return parts


def quantity(value: Number, units: Composite, comparator: str | None = None) -> Json:
    q: Json = {"value": value}
    if comparator:
        q["comparator"] = comparator
    q.update(unit_parts(units))
    return q


def nm_value(text: str, units: Composite) -> Json:
    """OBX-5 of type NM -> ``{"valueQuantity": ...}``; a comparator-prefixed number (a common
    sender error: "<0.5" in an NM) becomes a Quantity with comparator; other text a string."""
    number = parse_number(text)
    if number is not None:
        return {"valueQuantity": quantity(number, units)}
    match = _PREFIXED.fullmatch(text.strip())
    if match:
        parsed = parse_number(match.group("num"))
        if parsed is not None:
            return {"valueQuantity": quantity(parsed, units, _COMPARATORS.get(match.group("cmp") or ""))}
    return {"valueString": text}


def sn_value(sn: Composite, units: Composite) -> Json:
    """OBX-5 of type SN -> Quantity, Range, Ratio or string (IG OBX-5 SN rows)."""
    comparator, first, separator, second = sn.get(1), sn.get(2), sn.get(3), sn.get(4)
    num1, num2 = parse_number(first), parse_number(second)
    readable = " ".join(p for p in (comparator, first, separator, second) if p)
    if comparator == "<>" or (first and num1 is None) or (second and num2 is None):
        return {"valueString": readable} if readable else {}
    if separator in (":", "/") and num1 is not None and num2 is not None:
        numerator: Json = {"value": num1}
        if comparator in _COMPARATORS:
            numerator["comparator"] = _COMPARATORS[comparator]
        return {"valueRatio": {"numerator": numerator, "denominator": {"value": num2}}}
    if separator == "-" and num1 is not None and num2 is not None:
        unit = unit_parts(units)
        return {"valueRange": {"low": {"value": num1, **unit}, "high": {"value": num2, **unit}}}
    if not separator and not second and num1 is not None:
        return {"valueQuantity": quantity(num1, units, _COMPARATORS.get(comparator))}
    return {"valueString": readable} if readable else {}


def reference_range(text: str, units: Composite) -> Json | None:
    """OBX-7 -> one referenceRange: low/high for "a-b" (also "a to b", "(a-b)"), text always."""
    if not text:
        return None
    found = _reference_range(text, *units.heads(3))
    # Fresh containers: a cached one inside a resource would change with any edit of that resource.
    return {k: dict(v) if isinstance(v, dict) else v for k, v in found.items()}


@lru_cache(maxsize=1024)  # a test's range and units repeat in every result of that test
def _reference_range(text: str, unit_code: str, unit_text: str, unit_system: str) -> Json:
    match = _RANGE.fullmatch(text.strip())
    if not match:
        return {"text": text}
    low, high = parse_number(match.group("low")), parse_number(match.group("high"))
    unit = _unit_parts(unit_code, unit_text, unit_system)
    return prune(
        {
            "low": {"value": low, **unit} if low is not None else None,
            "high": {"value": high, **unit} if high is not None else None,
            "text": text,
        }
    ) or {"text": text}
