"""What the FHIR API searches on, computed once when a resource version is stored.

Each stored resource carries two kinds of search values beside its JSON (columns of
``resources``):

- ``search_tokens``: its token and reference search values as one text, each value a
  word ``name|code|system`` between spaces (``name|code|`` without a system), and
  ``name#system`` once per system for a search by system alone. A search is a
  case-sensitive substring test, the same SQL on SQLite and PostgreSQL: `` name|code|``
  for a code in any system, `` name|code|system `` for both, `` name|code| `` for a code
  without a system, `` name#system `` for a system.
- ``date_low`` / ``date_high``: the half-open UTC range of its clinical date (the type's
  ``date``-like parameter), which prefixed date searches and ``_sort=date`` compare.

Written by ``core.store.ResourceWriter`` in the same statement as the row, so a search sees
exactly what a read sees. Why not an index table of one row per value, as HAPI FHIR keeps:
it would triple the rows the pipeline writes per message (issue 16), while these columns
cost one value each; a population search by code scans the type's rows, which is what the
patient-scoped searches LLM services make do not need.

The parameters themselves (``SEARCH_PARAMETERS``) are the API's and CapabilityStatement's
single source: a parameter declared there is indexed here and searchable there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any

__all__ = [
    "DATE_MAX",
    "DATE_MIN",
    "SEARCH_PARAMETERS",
    "SearchParameter",
    "date_range",
    "index_values",
    "token_word",
]

DATE_MIN = datetime(1, 1, 1, tzinfo=UTC)
DATE_MAX = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


@dataclass(frozen=True)
class SearchParameter:
    """One search parameter of one resource type.

    ``kind``: the FHIR search parameter type (token, reference, date). ``paths``: element
    paths (dot-separated; a choice element spelled out, e.g. ``effectiveDateTime``), the
    first present one giving a date, every one giving tokens. ``target``: for a
    reference, the types it may point at (for ``_include``)."""

    name: str
    kind: str
    paths: tuple[str, ...]
    definition: str
    target: tuple[str, ...] = ()

    @property
    def steps(self) -> tuple[list[str], ...]:
        return tuple(path.split(".") for path in self.paths)


def _p(name: str, kind: str, *paths: str, target: tuple[str, ...] = ()) -> SearchParameter:
    definition = f"http://hl7.org/fhir/SearchParameter/{_DEFINITION.get(name, 'clinical-' + name)}"
    return SearchParameter(name, kind, paths, definition, target)


# The common parameters' canonical URLs where they are not clinical-<name>.
_DEFINITION = {
    "status": "Observation-status",
    "category": "Observation-category",
    "identifier": "clinical-identifier",
    "result": "DiagnosticReport-result",
    "onset-date": "Condition-onset-date",
    "recorded-date": "Condition-recorded-date",
    "started": "ImagingStudy-started",
    "authored": "ServiceRequest-authored",
    "recorded": "Provenance-recorded",
    "collected": "Specimen-collected",
    "modality": "ImagingStudy-modality",
    "type": "clinical-type",
    "clinical-status": "Condition-clinical-status",
    "class": "Encounter-class",
    "gender": "individual-gender",
}

_PERIOD_DATE = ("period",)

# Per type: its date parameter (at most one, stored in date_low/date_high), tokens and
# references. Parameters every type has (_id, _lastUpdated, patient) are the API's.
SEARCH_PARAMETERS: dict[str, tuple[SearchParameter, ...]] = {
    "Observation": (
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("status", "token", "status"),
        _p("identifier", "token", "identifier"),
        _p("date", "date", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
    ),
    "DiagnosticReport": (
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("status", "token", "status"),
        _p("identifier", "token", "identifier"),
        _p("date", "date", "effectiveDateTime", "effectivePeriod"),
        _p("result", "reference", "result", target=("Observation",)),
    ),
    "Encounter": (
        _p("class", "token", "class"),
        _p("status", "token", "status"),
        _p("type", "token", "type"),
        _p("identifier", "token", "identifier"),
        _p("date", "date", *_PERIOD_DATE),
    ),
    "Condition": (
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("clinical-status", "token", "clinicalStatus"),
        _p("onset-date", "date", "onsetDateTime", "onsetPeriod"),
    ),
    "AllergyIntolerance": (
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("clinical-status", "token", "clinicalStatus"),
        _p("date", "date", "recordedDate"),
    ),
    "Procedure": (
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("status", "token", "status"),
        _p("date", "date", "performedDateTime", "performedPeriod"),
    ),
    "ServiceRequest": (
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("status", "token", "status"),
        _p("identifier", "token", "identifier"),
        _p("authored", "date", "authoredOn"),
    ),
    "DocumentReference": (
        _p("type", "token", "type"),
        _p("category", "token", "category"),
        _p("status", "token", "status"),
        _p("date", "date", "date"),
    ),
    "ImagingStudy": (
        _p("modality", "token", "modality"),
        _p("status", "token", "status"),
        _p("identifier", "token", "identifier"),
        _p("started", "date", "started"),
    ),
    "Specimen": (
        _p("type", "token", "type"),
        _p("status", "token", "status"),
        _p("collected", "date", "collection.collectedDateTime", "collection.collectedPeriod"),
    ),
    "Patient": (
        _p("gender", "token", "gender"),
        _p("identifier", "token", "identifier"),
    ),
    "EpisodeOfCare": (
        _p("status", "token", "status"),
        _p("type", "token", "type"),
        _p("date", "date", *_PERIOD_DATE),
    ),
    "CareTeam": (
        _p("status", "token", "status"),
        _p("category", "token", "category"),
        _p("date", "date", *_PERIOD_DATE),
    ),
    "Provenance": (_p("recorded", "date", "recorded"),),
}


def _values(node: Any, path: list[str]) -> Iterator[Any]:
    """The values at ``path`` below ``node``, through lists at any step."""
    if isinstance(node, list):
        for item in node:
            yield from _values(item, path)
        return
    if not path:
        if node is not None:
            yield node
        return
    if isinstance(node, dict) and path[0] in node:
        yield from _values(node[path[0]], path[1:])


def _escape(text: str) -> str:
    # Spaces separate the words; '|' separates system from code; '%' escapes both.
    return text.replace("%", "%25").replace(" ", "%20").replace("|", "%7C")


def token_word(name: str, system: str | None, code: str | None) -> str:
    """What a search for a token looks for in ``search_tokens`` (spaces included where the
    match must end): ``system`` None means any system, "" no system; ``code`` None means any
    code of the system."""
    if code is None:
        return f" {name}#{_escape(system or '')} "
    head = f" {name}|{_escape(code)}|"
    return head if system is None else f"{head}{_escape(system)} "


def _pairs(value: Any) -> Iterator[tuple[str, str]]:
    """(system, code) of a token value: a code, a Coding, a CodeableConcept, an Identifier,
    a Reference (its reference, no system)."""
    if isinstance(value, str):
        yield "", value
    elif isinstance(value, dict):
        if "coding" in value:
            for coding in value["coding"] or ():
                yield from _pairs(coding)
        elif isinstance(value.get("code"), str):
            yield str(value.get("system") or ""), value["code"]
        elif isinstance(value.get("value"), str):
            yield str(value.get("system") or ""), value["value"]
        elif isinstance(value.get("reference"), str):
            yield "", value["reference"]


def _words(name: str, value: Any) -> Iterator[str]:
    for system, code in _pairs(value):
        if code:
            yield from _words_of(name, system, code)


@lru_cache(maxsize=8192)  # a feed repeats its codes: the words are made once per code
def _words_of(name: str, system: str, code: str) -> tuple[str, ...]:
    word = f"{name}|{_escape(code)}|{_escape(system)}"
    return (word, f"{name}#{_escape(system)}") if system else (word,)


# FHIR date, dateTime and instant: a year at least, then month, day, time, zone.
_DATE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


@lru_cache(maxsize=8192)  # a message's results share their times
def date_range(text: str) -> tuple[datetime, datetime] | None:
    """The half-open UTC range a FHIR date/dateTime/instant stands for at its precision
    ("2024-03" is all of March). A value without a zone (a date, or a dateTime against the
    spec) is read as UTC. None: not such a value."""
    match = _DATE.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        if month is None:
            low = datetime(int(year), 1, 1, tzinfo=UTC)
            return low, _next(low, years=1)
        if day is None:
            low = datetime(int(year), int(month), 1, tzinfo=UTC)
            return low, _next(low, months=1)
        if hour is None:
            low = datetime(int(year), int(month), int(day), tzinfo=UTC)
            return low, _next(low, days=1)
        micro = int((fraction or ".0")[1:7].ljust(6, "0"))
        local = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro)
        offset = timedelta(0)
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            offset = sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        low = (local - offset).replace(tzinfo=UTC)
        step = (
            timedelta(microseconds=1)
            if fraction
            else timedelta(seconds=1)
            if second
            else timedelta(minutes=1)
        )
        return low, min(low + step, DATE_MAX)
    except (ValueError, OverflowError):
        return None


def _next(low: datetime, *, years: int = 0, months: int = 0, days: int = 0) -> datetime:
    try:
        if years:
            return low.replace(year=low.year + years)
        if months:
            return (
                low.replace(year=low.year + 1, month=1)
                if low.month == 12
                else low.replace(month=low.month + 1)
            )
        return low + timedelta(days=days)
    except (ValueError, OverflowError):
        return DATE_MAX


def _date_of(value: Any) -> tuple[datetime, datetime] | None:
    if isinstance(value, str):
        return date_range(value)
    if isinstance(value, dict) and ("start" in value or "end" in value):  # a Period
        start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
        if start is None and end is None:
            return None
        return (start[0] if start else DATE_MIN), (end[1] if end else DATE_MAX)
    return None


@cache
def _plan(rtype: str) -> tuple[tuple[str, bool, tuple[list[str], ...]], ...]:
    """(name, is a date, paths split into steps) per parameter of a type: worked out once."""
    return tuple((p.name, p.kind == "date", p.steps) for p in SEARCH_PARAMETERS.get(rtype, ()))


def index_values(resource: dict[str, Any]) -> tuple[str | None, datetime | None, datetime | None]:
    """(search_tokens, date_low, date_high) of a resource, per ``SEARCH_PARAMETERS``."""
    words: dict[str, None] = {}  # ordered and unique
    low: datetime | None = None
    high: datetime | None = None
    for name, is_date, steps in _plan(resource.get("resourceType", "")):
        for path in steps:
            # Most paths are one element: read it without the walk.
            values = _values(resource, path) if len(path) > 1 else _values(resource.get(path[0]), [])
            if is_date:
                found = next((r for v in values if (r := _date_of(v))), None)
                if found is not None:
                    low, high = found
                    break
            else:
                for value in values:
                    for word in _words(name, value):
                        words[word] = None
    tokens = " " + " ".join(words) + " " if words else None
    return tokens, low, high
