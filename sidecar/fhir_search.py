"""FHIR search requests turned into SQL over the de-identified store (FHIR R4 search, 3.1.1).

``parse_search`` reads a request's parameters against what the store indexes
(``core.search_index.SEARCH_PARAMETERS`` plus ``_id``, ``_lastUpdated``, ``patient`` /
``subject`` and the result parameters) and answers a ``SearchPlan``: the WHERE clauses, the
sort, the page size, the includes and the parameters it applied (the ``self`` link). An
unknown parameter, modifier or include is refused under ``Prefer: handling=strict`` and
left out otherwise, as the spec says; a known parameter with a malformed value is refused
either way.

Paging is by keyset, not offset: the next link carries the sort values of the page's last
row (``_cursor``), so rows stored while a client pages neither repeat nor shift a page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, false, func, or_
from sqlalchemy.types import DateTime

from core.search_index import DATE_MIN, SEARCH_PARAMETERS, SearchParameter, date_range, token_word
from core.tables import Resource

__all__ = [
    "COMMON_PARAMETERS",
    "PAGE_MAX",
    "RESULT_PARAMETERS",
    "Include",
    "SearchError",
    "SearchPlan",
    "SortKey",
    "includes_of",
    "instant_of",
    "page_size",
    "parse_search",
    "revincludes_of",
    "searchable_types",
    "token_condition",
]

PAGE_DEFAULT = 100
PAGE_MAX = 1000
PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb")
# Parameters of every type: (name, FHIR type, definition).
COMMON_PARAMETERS = (
    ("_id", "token", "http://hl7.org/fhir/SearchParameter/Resource-id"),
    ("_lastUpdated", "date", "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"),
)
PATIENT_PARAMETERS = (
    ("patient", "reference", "http://hl7.org/fhir/SearchParameter/clinical-patient"),
    ("subject", "reference", "http://hl7.org/fhir/SearchParameter/Observation-subject"),
)
RESULT_PARAMETERS = ("_count", "_sort", "_summary", "_total", "_include", "_revinclude", "_format", "_cursor")
_FORMATS = {"json", "application/json", "application/fhir+json"}


class SearchError(Exception):
    """A request the server refuses: ``status`` and an OperationOutcome issue code (the
    API answers it as an OperationOutcome: ``sidecar.api_common.Problem`` is this class)."""

    def __init__(self, status: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics = status, code, diagnostics


@dataclass(frozen=True)
class SortKey:
    """One ``_sort`` key: its name as the client wrote it, its column, and its direction."""

    name: str
    column: Any
    descending: bool
    is_date: bool


@dataclass(frozen=True)
class Include:
    """``_include`` / ``_revinclude`` as ``source:parameter`` (e.g. DiagnosticReport:result)."""

    source: str
    parameter: str

    @property
    def text(self) -> str:
        return f"{self.source}:{self.parameter}"


@dataclass
class SearchPlan:
    rtype: str
    where: list[ColumnElement[bool]]
    sort: list[SortKey]
    count: int
    patients: list[str]  # the patients searched (patient=/subject=), empty: population
    applied: list[tuple[str, str]]  # the parameters applied, for the self link
    summary_count: bool = False
    total: bool = True
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    after: tuple[Any, ...] | None = None  # the cursor: sort values of the last row seen

    def keyset(self) -> ColumnElement[bool] | None:
        """Rows after the cursor in the plan's order."""
        if self.after is None:
            return None
        ors: list[ColumnElement[bool]] = []
        for i, key in enumerate(self.sort):
            equal = [k.column == v for k, v in zip(self.sort[:i], self.after[:i], strict=False)]
            beyond = key.column < self.after[i] if key.descending else key.column > self.after[i]
            ors.append(and_(*equal, beyond))
        return or_(*ors)

    def order_by(self) -> list[Any]:
        return [k.column.desc() if k.descending else k.column.asc() for k in self.sort]

    def cursor_after(self, values: Sequence[Any]) -> str:
        raw = [v.isoformat() if isinstance(v, datetime) else v for v in values]
        return base64.urlsafe_b64encode(json.dumps(raw, separators=(",", ":")).encode()).decode().rstrip("=")


def token_condition(dialect: str, word: str) -> ColumnElement[bool]:
    """The rows whose ``search_tokens`` hold ``word`` (``token_word``'s; a case-sensitive
    substring test)."""
    finder = func.strpos if dialect == "postgresql" else func.instr
    return finder(Resource.search_tokens, word) > 0


def searchable_types(stored: Sequence[str]) -> list[str]:
    """The types the server answers for: those stored and those the search tables know."""
    return sorted(set(stored) | set(SEARCH_PARAMETERS) | {"Patient"})


def includes_of(rtype: str) -> list[str]:
    """The ``_include`` values a search of ``rtype`` takes."""
    out = [f"{rtype}:patient", f"{rtype}:subject"] if rtype != "Patient" else []
    out += [f"{rtype}:{p.name}" for p in SEARCH_PARAMETERS.get(rtype, ()) if p.kind == "reference"]
    return out


def revincludes_of(rtype: str, types: Sequence[str]) -> list[str]:
    """The ``_revinclude`` values a search of ``rtype`` takes, among the stored ``types``."""
    if rtype == "Patient":
        return [f"{t}:patient" for t in types if t != "Patient"]
    return [
        f"{source}:{p.name}"
        for source in types
        for p in SEARCH_PARAMETERS.get(source, ())
        if p.kind == "reference" and rtype in p.target
    ]


def _prefixed(value: str) -> tuple[str, str]:
    if value[:2] in PREFIXES and value[2:3].isdigit():
        return value[:2], value[2:]
    return "eq", value


def date_condition(low: Any, high: Any, prefix: str, text: str, name: str) -> ColumnElement[bool]:
    """FHIR date matching of a resource's range [low, high) against the search value's
    implicit range [pl, ph) (search 3.1.1.5.3, ranges half-open here)."""
    found = date_range(text)
    if found is None:
        raise SearchError(400, "value", f"{name}: {text!r} is not a FHIR date, dateTime or instant")
    pl, ph = (bindparam(None, v, type_=DateTime(timezone=True)) for v in found)
    conditions = {
        "eq": and_(low >= pl, high <= ph),
        "ne": or_(low < pl, high > ph),
        "lt": low < pl,
        "gt": high > ph,
        "le": low < ph,
        "ge": high > pl,
        "sa": low >= ph,
        "eb": high <= pl,
    }
    return and_(low.is_not(None), conditions[prefix])


def page_size(text: str, *, minimum: int) -> int:
    """A ``_count`` value: a whole number from ``minimum`` to PAGE_MAX."""
    try:
        count = int(text)
    except ValueError:
        raise SearchError(400, "value", "_count must be a whole number") from None
    if not minimum <= count <= PAGE_MAX:
        raise SearchError(400, "value", f"_count must be {minimum}..{PAGE_MAX}")
    return count


def instant_of(text: str, name: str) -> datetime:
    """The start of a ``_since``-like value (a FHIR instant, or a coarser date)."""
    found = date_range(text)
    if found is None:
        raise SearchError(400, "value", f"{name} must be a FHIR instant")
    return found[0]


def _decode_cursor(text: str, sort: list[SortKey]) -> tuple[Any, ...]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not isinstance(raw, list) or len(raw) != len(sort):
            raise ValueError("length")
        values: list[Any] = []
        for key, value in zip(sort, raw, strict=True):
            if key.is_date:
                values.append(datetime.fromisoformat(value))
            elif isinstance(value, str):
                values.append(value)
            else:
                raise ValueError("type")
        return tuple(values)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise SearchError(400, "value", "_cursor is not one this server made for this search") from exc


def _sort_keys(rtype: str, text: str | None) -> list[SortKey]:
    date_param = next((p for p in SEARCH_PARAMETERS.get(rtype, ()) if p.kind == "date"), None)
    keys: list[SortKey] = []
    for raw in (text or "").split(","):
        if not raw:
            continue
        descending, name = raw.startswith("-"), raw.removeprefix("-")
        if name == "_id":
            keys.append(SortKey(name, Resource.resource_id, descending, False))
        elif name == "_lastUpdated":
            keys.append(SortKey(name, Resource.updated_at, descending, True))
        elif date_param is not None and name == date_param.name:
            floor = bindparam(None, DATE_MIN, type_=DateTime(timezone=True))
            keys.append(SortKey(name, func.coalesce(Resource.date_low, floor), descending, True))
        else:
            raise SearchError(400, "not-supported", f"_sort by {name!r} is not supported on {rtype}")
    if not any(k.name == "_id" for k in keys):
        last_descending = keys[-1].descending if keys else False
        keys.append(SortKey("_id", Resource.resource_id, last_descending, False))
    return keys


def _references(values: str, name: str, default_type: str) -> list[str]:
    ids = []
    for value in values.split(","):
        kind, _, rid = value.rpartition("/")
        if kind and kind != default_type:
            raise SearchError(400, "value", f"{name}: a {default_type} reference is expected")
        if not rid:
            raise SearchError(400, "value", f"{name}: empty reference")
        ids.append(rid)
    return ids


def parse_search(
    rtype: str,
    params: Sequence[tuple[str, str]],
    *,
    dialect: str,
    strict: bool,
    stored_types: Sequence[str],
) -> SearchPlan:
    """The plan of a search of ``rtype`` with the request's ``params`` (in order, repeats
    kept: repeated parameters are ANDed, comma-separated values ORed)."""
    declared = {p.name: p for p in SEARCH_PARAMETERS.get(rtype, ())}
    where: list[ColumnElement[bool]] = [Resource.resource_type == rtype]
    applied: list[tuple[str, str]] = []
    patients: list[str] = []
    results: dict[str, list[str]] = {}

    def unknown(name: str, why: str) -> None:
        if strict:  # lenient: left out, and so out of the self link
            raise SearchError(400, "not-supported", f"{name}: {why}")

    for name, value in params:
        base, _, modifier = name.partition(":")
        if base in RESULT_PARAMETERS:
            results.setdefault(base, []).append(value)
            continue
        if modifier and not (base in ("patient", "subject") and modifier == "Patient"):
            unknown(name, f"the modifier :{modifier} is not supported")
            continue
        if value == "":
            continue  # an empty parameter value is ignored (search 3.1.1.4)
        if base in ("patient", "subject") and rtype != "Patient":
            ids = _references(value, base, "Patient")
            if patients:
                if not set(patients) & set(ids):
                    where.append(false())
                patients = [p for p in patients if p in ids]
            else:
                patients = ids
            applied.append((name, value))
        elif base == "_id":
            where.append(Resource.resource_id.in_(value.split(",")))
            if rtype == "Patient":
                patients = patients or value.split(",")
            applied.append((name, value))
        elif base == "_lastUpdated":
            ors = []
            for one in value.split(","):
                prefix, text = _prefixed(one)
                updated = Resource.updated_at
                ors.append(date_condition(updated, updated, prefix, text, name))
            where.append(or_(*ors))
            applied.append((name, value))
        elif base in declared:
            where.append(_condition(declared[base], value, dialect))
            applied.append((name, value))
        else:
            unknown(name, f"not a search parameter of {rtype} on this server")

    sort = _sort_keys(rtype, ",".join(results.get("_sort", [])))
    for key in ("_sort",):
        if key in results:
            applied.append((key, ",".join(results[key])))
    count = PAGE_DEFAULT
    if "_count" in results:
        count = page_size(results["_count"][-1], minimum=0)
        applied.append(("_count", str(count)))
    summary = results.get("_summary", [])
    summary_count = summary == ["count"] or count == 0
    if summary and summary != ["count"]:
        unknown("_summary", "only _summary=count is supported")
    elif summary:
        applied.append(("_summary", "count"))
    total = True
    for value in results.get("_total", []):
        if value not in ("none", "estimate", "accurate"):
            raise SearchError(400, "value", "_total must be none, estimate or accurate")
        total = value != "none"
        applied.append(("_total", value))
    for value in results.get("_format", []):
        if value not in _FORMATS:
            raise SearchError(406, "not-supported", "this server answers JSON only")
    includes = _includes(results.get("_include", []), includes_of(rtype), "_include", strict)
    allowed = revincludes_of(rtype, searchable_types(stored_types))
    revincludes = _includes(results.get("_revinclude", []), allowed, "_revinclude", strict)
    applied += [("_include", i.text) for i in includes] + [("_revinclude", i.text) for i in revincludes]
    plan = SearchPlan(
        rtype,
        where,
        sort,
        count,
        patients,
        applied,
        summary_count=summary_count,
        total=total,
        includes=includes,
        revincludes=revincludes,
    )
    if patients:
        plan.where.append(Resource.patient.in_(patients))
    if cursor := results.get("_cursor"):
        plan.after = _decode_cursor(cursor[-1], sort)
    return plan


def _includes(values: list[str], allowed: list[str], name: str, strict: bool) -> list[Include]:
    out = []
    for value in values:
        if value not in allowed:
            if strict:
                raise SearchError(400, "not-supported", f"{name}={value} is not supported here")
            continue
        source, _, parameter = value.partition(":")
        out.append(Include(source, parameter))
    return out


def _condition(parameter: SearchParameter, value: str, dialect: str) -> ColumnElement[bool]:
    ors: list[ColumnElement[bool]] = []
    for one in value.split(","):
        if parameter.kind == "date":
            prefix, text = _prefixed(one)
            ors.append(date_condition(Resource.date_low, Resource.date_high, prefix, text, parameter.name))
        elif parameter.kind == "reference":
            reference = one if "/" in one else f"{parameter.target[0]}/{one}"
            ors.append(token_condition(dialect, token_word(parameter.name, None, reference)))
        else:
            system, bar, code = one.partition("|")
            if not bar:
                word = token_word(parameter.name, None, one)
            else:
                word = token_word(parameter.name, system, code or None)
            ors.append(token_condition(dialect, word))
    return or_(*ors)
