"""Summary kinds: which clinical moment triggers which kind, and what each kind shows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.events import ChangeKind
from core.reports import is_imaging_report
from core.store import StoredChange
from deid import DeidentifiedResource
from sandbox.templates import TEMPLATES, template_for
from worker.triggers import next_digest, summary_triggers

META = {"versionId": "1"}


def obs(i: str, value: Any, when: str, flag: str | None = None) -> dict[str, Any]:
    o: dict[str, Any] = {"resourceType": "Observation", "id": i, "meta": META, "code": {"text": f"T{i}"},
                         "effectiveDateTime": when}  # fmt: skip
    o["valueQuantity" if isinstance(value, float) else "valueString"] = (
        {"value": value, "unit": "mmol/L"} if isinstance(value, float) else value
    )
    if flag:
        o["interpretation"] = [{"coding": [{"code": flag}]}]
    return o


def report(i: str, name: str, results: list[str], when: str, conclusion: str | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "DiagnosticReport", "id": i, "meta": META, "status": "final",
                         "code": {"text": name}, "effectiveDateTime": when,
                         "result": [{"reference": f"Observation/{x}"} for x in results]}  # fmt: skip
    if conclusion:
        r["conclusion"] = conclusion
    return r


PATIENT = {"resourceType": "Patient", "id": "p", "meta": META, "gender": "female", "birthDate": "1970-01-01"}
RECORD = [
    PATIENT,
    obs("k", 6.1, "2026-03-01T10:00:00+00:00", "H"),
    obs("na", 139.0, "2026-03-01T10:00:00+00:00", "N"),
    obs("old", 4.0, "2026-01-01T10:00:00+00:00"),  # in no report
    report("lab", "Basic metabolic panel", ["k", "na"], "2026-03-01T10:00:00+00:00"),
    obs("line1", "No pneumothorax.", "2026-03-02T09:00:00+00:00"),
    report("ct", "CT chest without contrast", ["line1"], "2026-03-02T09:00:00+00:00", "No pneumothorax."),
    {
        "resourceType": "ImagingStudy",
        "id": "st",
        "meta": META,
        "status": "available",
        "modality": [{"code": "CT"}],
        "started": "2026-03-02T08:40:00+00:00",
    },
]


def shown(kind: str) -> set[str]:
    return {f.reference.split("/")[1] for f in TEMPLATES[kind].facts(RECORD, "en")}


def test_each_kind_shows_its_own_part_of_the_record() -> None:
    assert shown("lab-report") == {"p", "k", "na", "lab"}
    # A text report's lines are its conclusion: shown once, as the report.
    assert shown("imaging-report") == {"p", "ct", "st"}
    assert shown("discharge") == {"p", "k", "na", "old", "lab", "line1", "ct", "st"}
    assert shown("digest") == {"p", "k", "na", "lab", "line1", "ct", "st"}  # not January's value
    assert template_for("report") is TEMPLATES["lab-report"]  # jobs queued before the split
    assert template_for("horoscope") is None


def test_imaging_reports_are_told_by_category_study_link_or_name() -> None:
    assert is_imaging_report({"code": {"text": "胸部CT平扫"}})
    assert is_imaging_report({"code": {"coding": [{"display": "XR Chest 2 Views"}]}})
    assert is_imaging_report({"code": {"text": "Report"}, "category": [{"coding": [{"code": "RAD"}]}]})
    assert is_imaging_report({"code": {"text": "Report"}, "imagingStudy": [{"reference": "ImagingStudy/x"}]})
    assert not is_imaging_report({"code": {"text": "Basic metabolic panel"}})
    assert not is_imaging_report({"code": {"text": "Procalcitonin"}})  # "ct" inside a word is not CT


def change(resource: dict[str, Any], kind: ChangeKind | None = ChangeKind.CREATED) -> StoredChange:
    return StoredChange(resource["resourceType"], resource["id"], 1, kind)


def test_final_reports_and_finished_encounters_trigger_their_kinds_and_digests_wait_for_their_hour() -> None:
    now = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
    finished = {"resourceType": "Encounter", "id": "e", "status": "finished"}
    items = [RECORD[4], RECORD[6], finished, RECORD[1]]
    resources = [DeidentifiedResource(r, "p") for r in items]
    changes = [change(r) for r in items]

    kinds = {(r.kind, r.due) for r in summary_triggers(resources, changes, now=now)}
    assert kinds == {("lab-report", None), ("imaging-report", None), ("discharge", None)}

    with_digest = summary_triggers(resources, changes, now=now, digest_hour=6)
    [digest] = [r for r in with_digest if r.kind == "digest"]
    assert digest.due == datetime(2026, 3, 3, 6, 0, tzinfo=UTC) == next_digest(now, 6)
    assert next_digest(now, 18) == datetime(2026, 3, 2, 18, 0, tzinfo=UTC)

    unchanged = [change(r, None) for r in items]  # a resend: nothing new, nothing to summarise
    assert summary_triggers(resources, unchanged, now=now, digest_hour=6) == []
