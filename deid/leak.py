"""The last gate: no phi value the message reported may survive into the output.

Independent of how the output was produced, this walks every key and value of every
resource and looks for each reported value. It fails closed: a coincidental match is
reported as a leak, because letting a real one through is the worse error. Its message
names kinds and element paths only, never the value, so it is safe to log.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import IdentifierLeak

from . import phi
from .dates import is_fhir_date, parse_loose_date
from .policy import COMPLEX, PSEUDONYM_SYSTEM, RESOURCES

_MIN_SIGNIFICANCE = 4
_MIN_NUMERIC_DIGITS = 4
# Below this, a digits-only comparison across separators matches by chance too often
# (codes, quantities, shifted dates); the literal comparison still covers short values.
_MIN_DIGITS_FOR_RUNS = 7
_NUMERIC_KINDS = frozenset({"ID", "PHONE"})
# Digits joined by what people write between them in phone numbers and ids.
_DIGIT_RUN = re.compile(r"\d(?:[ \-./()+]{0,3}\d)*")
_OUTPUT_DATE_SHAPE = re.compile(r"\d{4}-\d{2}(?:-\d{2}(?:[T ]\d{2}:\d{2}.*)?)?")
_SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_TOKEN_KEYS = frozenset({"id", "reference"})
# Values at these keys are vocabulary the mapper writes (resource types, code-system URIs,
# FHIR codes), never data copied from the message. Real feeds name test patients
# "PATIENT" or "LOINC", which matched them and dead-lettered clean messages.
_STRUCTURAL_KEYS = frozenset({"resourceType", "system", "url", "profile", "status", "gender", "use"})
_MAX_REPORTED = 20
_POLICY_ELEMENT_NAMES: frozenset[str] = frozenset(
    {
        "resourceType",
        "id",
        "meta",
        *(n for e in COMPLEX.values() for n in e),
        *(n for e in RESOURCES.values() for n in e),
    }
)


@dataclass(frozen=True)
class _Needle:
    kind: str
    casefolded: str
    pattern: phi.ValuePattern
    digits: str  # compared against digit runs when not empty


def _needles(phi_values: Mapping[str, str]) -> list[_Needle]:
    needles = []
    for value, kind in phi.variants(phi_values):
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
            _Needle(
                kind=kind,
                casefolded=value.casefold(),
                pattern=phi.value_pattern(value, bound_digits=True),
                digits=digits if numeric and len(digits) >= _MIN_DIGITS_FOR_RUNS else "",
            )
        )
    return needles


def _digit_runs(text: str) -> list[str]:
    return [re.sub(r"\D", "", run.group()) for run in _DIGIT_RUN.finditer(text)]


def _hits_text(needle: _Needle, text: str, runs: list[str] | None = None) -> bool:
    if needle.pattern.search(text):
        return True
    if needle.digits:
        return any(needle.digits in run for run in (_digit_runs(text) if runs is None else runs))
    return False


def _hits_token(needle: _Needle, token: str) -> bool:
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


def _leaves(
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
            yield from _leaves(child, f"{path}.{child_key}", node, child_key)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _leaves(item, f"{path}[{i}]", parent, key)
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


def _safe_path(path: str, needles: list[_Needle]) -> str:
    # Element names are safe to report; anything else in the path might itself be the value.
    def safe(part: str) -> bool:
        if not part or part == "." or re.fullmatch(r"\[\d+\]", part):
            return True
        return _SAFE_KEY.fullmatch(part) is not None and not any(_hits_text(n, part) for n in needles)

    return "".join(part if safe(part) else "?" for part in re.split(r"(\.|\[\d+\])", path))


def check_no_leak(resources: list[dict[str, Any]], phi_values: dict[str, str]) -> None:
    """Raise IdentifierLeak if any phi value occurs in ``resources``.

    Values are compared after NFKC and case folding; values of kind ID or PHONE with
    seven or more digits are also compared digits-only against digit runs, so
    "555 123 4567" still matches "(555) 123-4567".
    """
    needles = _needles(phi_values)
    if not needles:
        return
    findings: set[tuple[str, str]] = set()
    for index, resource in enumerate(resources):
        resource_type = resource.get("resourceType") if isinstance(resource, Mapping) else None
        root = resource_type if isinstance(resource_type, str) else "Resource"
        for path, text, mode in _leaves(resource, root, None, ""):
            runs = _digit_runs(text) if mode != "token" and any(n.digits for n in needles) else []
            for needle in needles:
                hit = _hits_token(needle, text) if mode == "token" else _hits_text(needle, text, runs)
                if hit:
                    findings.add((needle.kind, f"resources[{index}] {_safe_path(path, needles)}"))
    if findings:
        ordered = sorted(findings, key=lambda f: (f[1], f[0]))
        shown = "; ".join(f"{kind} in {where}" for kind, where in ordered[:_MAX_REPORTED])
        more = f"; and {len(ordered) - _MAX_REPORTED} more" if len(ordered) > _MAX_REPORTED else ""
        kinds = ", ".join(sorted({kind for kind, _ in findings}))
        raise IdentifierLeak(f"identifier leak ({kinds}): {shown}{more}")
