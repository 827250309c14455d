"""Summary kinds as versioned templates: what each one is about, and which facts it shows.

Each kind's trigger lives in the identified zone (worker.triggers: a finished encounter, a
final lab or imaging report, a day's activity); here is what the model is shown for it.
A template's version goes into every Provenance it writes (``policy``): change what a kind
selects or says, raise its version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.reports import is_imaging_report
from sandbox.facts import Fact, facts_for

__all__ = ["KINDS", "TEMPLATES", "Template", "template_for"]

Resources = list[dict[str, Any]]
LEGACY_KINDS = {"report": "lab-report"}  # jobs queued before the report kinds were split


def _when(resource: dict[str, Any]) -> str:
    for key in ("effectiveDateTime", "issued", "onsetDateTime", "recordedDate", "started"):
        if resource.get(key):
            return str(resource[key])
    period = resource.get("period") or resource.get("effectivePeriod") or {}
    return str(period.get("end") or period.get("start") or "")


def _by_type(resources: Resources, *types: str) -> Resources:
    return [r for r in resources if r["resourceType"] in types]


def _latest(resources: Resources, count: int) -> Resources:
    return sorted(resources, key=_when, reverse=True)[:count]


def _with_results(reports: Resources, resources: Resources) -> Resources:
    """The reports and their results; a text report's lines are left out, since its
    conclusion already says them (one fact, cited once, instead of the same words twice)."""
    wanted: set[str] = set()
    for rep in reports:
        texts = bool(rep.get("conclusion"))
        wanted.update(ref["reference"] for ref in rep.get("result", []) if "reference" in ref)
        if texts:
            wanted.update(f"text:{ref['reference']}" for ref in rep.get("result", []) if "reference" in ref)
    results = [
        r
        for r in _by_type(resources, "Observation")
        if f"Observation/{r['id']}" in wanted
        and not (f"text:Observation/{r['id']}" in wanted and "valueString" in r)
    ]
    return reports + results


def _lab_report(resources: Resources) -> Resources:
    reports = [r for r in _by_type(resources, "DiagnosticReport") if not is_imaging_report(r)]
    if not reports:
        return _by_type(resources, "Patient") + _latest(_by_type(resources, "Observation"), 20)
    return _by_type(resources, "Patient") + _with_results(_latest(reports, 3), resources)


def _imaging_report(resources: Resources) -> Resources:
    reports = _latest([r for r in _by_type(resources, "DiagnosticReport") if is_imaging_report(r)], 3)
    studies = _latest(_by_type(resources, "ImagingStudy"), 3)
    return _by_type(resources, "Patient") + _with_results(reports, resources) + studies


def _discharge(resources: Resources) -> Resources:
    encounters = _latest(_by_type(resources, "Encounter"), 1)
    return (
        _by_type(resources, "Patient")
        + encounters
        + _by_type(resources, "Condition")
        + _latest(_by_type(resources, "DiagnosticReport", "ImagingStudy"), 5)
        + _by_type(resources, "Observation")
    )


def _digest(resources: Resources) -> Resources:
    """The last day of the record: what has a clinical time within 24 h of the newest one."""
    dated = [(r, _when(r)) for r in resources if r["resourceType"] != "Patient" and _when(r)]
    if not dated:
        return _by_type(resources, "Patient")
    moments = [(r, _moment(w)) for r, w in dated]
    known = [m for _, m in moments if m is not None]
    if not known:
        return _by_type(resources, "Patient") + [r for r, _ in dated]
    since = max(known) - timedelta(days=1)
    return _by_type(resources, "Patient") + [r for r, m in moments if m is not None and m >= since]


def _moment(when: str) -> datetime | None:
    """A FHIR date or dateTime as an aware time (a date or a time without offset: UTC), so
    that "2026-03-05" and "2026-03-05T10:00:00+08:00" compare."""
    try:
        moment = datetime.fromisoformat(when)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Template:
    kind: str
    version: int
    select: Callable[[Resources], Resources]
    max_facts: int = 40  # abnormal facts first, so a cut drops normal ones

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.version}"

    def facts(self, resources: Resources, language: str) -> tuple[Fact, ...]:
        facts = facts_for(self.select(resources), language)[: self.max_facts]
        return facts


TEMPLATES: dict[str, Template] = {
    t.kind: t
    for t in (
        Template("discharge", 1, _discharge),
        Template("lab-report", 1, _lab_report),
        Template("imaging-report", 1, _imaging_report),
        Template("digest", 1, _digest),
    )
}
KINDS = tuple(TEMPLATES)


def template_for(kind: str) -> Template | None:
    return TEMPLATES.get(LEGACY_KINDS.get(kind, kind))
