"""Every corpus message with another converter's output (``.expected.json``, Microsoft
FHIR-Converter) compared by meaning, field by field, with an agreement figure.

Compared: Patient identifiers, names, birth date, gender, addresses; Observation codes,
values, units, reference ranges, interpretation, status, effective time; DiagnosticReport
status and conclusion. Where the two converters disagree on purpose (following the IG), the
reason is in docs/mapping-notes.md ("Differences from the FHIR-Converter").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.errors import UnsupportedMessage
from mapping import map_message
from mapping.hl7.numeric import reference_range
from mapping.hl7.parse import EMPTY
from tests.corpus import corpus_files

Json = dict[str, Any]
TARGET = 0.95


@dataclass
class Tally:
    agreed: int = 0
    compared: int = 0
    disagreements: list[str] = field(default_factory=list)

    def check(self, where: str, what: str, mine: Any, theirs: Any) -> None:
        if theirs in (None, [], {}, "", set(), frozenset()) and mine in (
            None,
            [],
            {},
            "",
            set(),
            frozenset(),
        ):
            return  # neither says anything
        self.compared += 1
        if mine == theirs:
            self.agreed += 1
        else:
            self.disagreements.append(f"{where} {what}: ours={mine!r} theirs={theirs!r}")

    @property
    def ratio(self) -> float:
        return self.agreed / self.compared if self.compared else 1.0


def _of_type(resources: list[Json], resource_type: str) -> list[Json]:
    return [r for r in resources if r.get("resourceType") == resource_type]


def _date(value: Any) -> Any:
    """The same instant compares equal whatever offset each converter wrote it in."""
    if not isinstance(value, str) or "T" not in value:
        return value
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment.astimezone(UTC).isoformat() if moment.tzinfo else moment.isoformat()


def _num(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) else value


def _identifiers(patient: Json) -> frozenset[str]:
    return frozenset(i["value"] for i in patient.get("identifier", []) if i.get("value"))


def _names(patient: Json) -> frozenset[tuple[str, str]]:
    """Family and first given name: who the name names (name parts beyond those differ by IG reading)."""
    return frozenset(
        (n.get("family", "").strip().upper(), (n.get("given") or [""])[0].strip().upper())
        for n in patient.get("name", [])
    )


def _addresses(patient: Json) -> frozenset[tuple[str, ...]]:
    return frozenset(
        (
            a.get("city", "").strip(),
            a.get("postalCode", "").strip(),
            a.get("state", "").strip(),
            (a.get("line") or [""])[0].strip(),
        )
        for a in patient.get("address", [])
    )


def _compare_patients(where: str, ours: list[Json], theirs: list[Json], tally: Tally) -> None:
    for mine in ours:
        match = max(theirs, key=lambda t: len(_identifiers(t) & _identifiers(mine)), default=None)
        if match is None or not _identifiers(match) & _identifiers(mine):
            continue
        # The other converter folds other people's identifiers/names into the Patient (guarantor,
        # insured, merged-away); ours must be contained in theirs.
        tally.check(where, "Patient.identifier", _identifiers(mine) <= _identifiers(match), True)
        tally.check(where, "Patient.name", _names(mine) <= _names(match) if _names(mine) else None, True)
        tally.check(where, "Patient.birthDate", mine.get("birthDate"), match.get("birthDate"))
        tally.check(where, "Patient.gender", mine.get("gender"), match.get("gender"))
        theirs_addresses = _addresses(match)
        tally.check(
            where,
            "Patient.address",
            _addresses(mine) <= theirs_addresses if _addresses(mine) else None,
            True if theirs_addresses else None,
        )


def _code(concept: Json | None) -> str:
    codings = (concept or {}).get("coding") or [{}]
    return str(codings[0].get("code", ""))


def _value(observation: Json) -> Any:
    if "component" in observation:
        return ("Components", tuple(_value(c) for c in observation["component"]))
    if "valueQuantity" in observation:
        q = observation["valueQuantity"]
        return ("Quantity", _num(q.get("value")), q.get("comparator"))
    if "valueCodeableConcept" in observation:
        return ("Code", _code(observation["valueCodeableConcept"]))
    if "valueString" in observation:
        return ("String", " ".join(observation["valueString"].split()))
    for key in ("valueDateTime", "valuePeriod", "valueTime", "valueRange", "valueRatio"):
        if key in observation:
            return (key, json.dumps(observation[key], sort_keys=True))
    return None


def _unit(observation: Json) -> Any:
    if "component" in observation:
        observation = observation["component"][0]
    q = observation.get("valueQuantity") or {}
    return q.get("code") or q.get("unit")


def _range(observation: Json) -> Any:
    """(low, high); a range given only as text ("70-80", "13 to 18") is read the way HL7 OBX-7 is."""
    ranges = (
        observation.get("referenceRange")
        or [r for c in observation.get("component", []) for r in c.get("referenceRange", [])]
        or [{}]
    )
    r = ranges[0]
    if "low" not in r and "high" not in r and r.get("text"):
        r = reference_range(r["text"], EMPTY) or r
    low, high = (r.get("low") or {}).get("value"), (r.get("high") or {}).get("value")
    return (_num(low), _num(high)) if low is not None or high is not None else r.get("text")


def _interpretation(observation: Json) -> frozenset[str]:
    return frozenset(_code(c) for c in observation.get("interpretation", []))


def _obx_codes(source: str) -> set[str]:
    """OBX-3.1 of every OBX: the other converter also makes Observations out of PID/PV1 fields
    (death certificate, autopsy, ...), which the IG does not; those are not compared."""
    codes = set()
    for line in re.split(r"[\r\n]+", source):
        if line.startswith("OBX"):
            fields = line.split(line[3])
            if len(fields) > 3:
                codes.add(fields[3].split("^")[0].strip())
    return codes


def _compare_observations(
    where: str, ours: list[Json], theirs: list[Json], obx: set[str], tally: Tally
) -> None:
    pool = list(ours)
    for their in theirs:
        code = _code(their.get("code"))
        if code not in obx:
            continue
        same_code = [o for o in pool if _code(o.get("code")) == code]
        # A code can repeat in one message (two OBX with one LOINC): pair the one that says the same.
        mine = next((o for o in same_code if _value(o) == _value(their)), same_code[0] if same_code else None)
        tally.check(where, f"Observation[{code}] present", mine is not None, True)
        if mine is None:
            continue
        pool.remove(mine)
        at = f"{where} Observation[{code}]"
        tally.check(at, "value", _value(mine), _value(their))
        tally.check(at, "unit", _unit(mine), _unit(their))
        tally.check(at, "referenceRange", _range(mine), _range(their))
        tally.check(at, "interpretation", _interpretation(mine), _interpretation(their))
        tally.check(at, "status", mine.get("status"), their.get("status"))
        tally.check(
            at, "effective", _date(mine.get("effectiveDateTime")), _date(their.get("effectiveDateTime"))
        )


def _compare_reports(where: str, ours: list[Json], theirs: list[Json], tally: Tally) -> None:
    for mine, their in zip(ours, theirs, strict=False):
        tally.check(where, "DiagnosticReport.status", mine.get("status"), their.get("status"))
        tally.check(where, "DiagnosticReport.conclusion", mine.get("conclusion"), their.get("conclusion"))


def compare_corpus() -> Tally:
    tally = Tally()
    for expected_path in corpus_files("*.expected.json"):
        source = expected_path.with_name(expected_path.name.replace(".expected.json", ".hl7"))
        text = source.read_text(encoding="utf-8")
        try:
            mapped = map_message(text)
        except UnsupportedMessage:
            continue  # a message type without a map: nothing to compare
        if mapped.segment_driven:
            continue  # the comparison measures the message maps, not the segment-driven fallback
        bundle = json.loads(expected_path.read_text(encoding="utf-8"))
        theirs = [entry["resource"] for entry in bundle.get("entry", [])]
        ours = mapped.resources
        where = expected_path.name.replace(".expected.json", "")
        _compare_patients(where, _of_type(ours, "Patient"), _of_type(theirs, "Patient"), tally)
        if not mapped.message_type.startswith("MDM"):  # IG: MDM's OBX is document content, not Observations
            obx = _obx_codes(text)
            _compare_observations(
                where, _of_type(ours, "Observation"), _of_type(theirs, "Observation"), obx, tally
            )
        _compare_reports(
            where, _of_type(ours, "DiagnosticReport"), _of_type(theirs, "DiagnosticReport"), tally
        )
    return tally


def test_agreement_with_the_other_converter() -> None:
    tally = compare_corpus()
    assert tally.compared >= 500
    assert tally.ratio >= TARGET, "\n".join(tally.disagreements)


if __name__ == "__main__":  # python -m tests.test_mapping_expected: print the figure and the differences
    result = compare_corpus()
    print("\n".join(result.disagreements))
    print(f"agreement {result.agreed}/{result.compared} = {result.ratio:.4f}")
