"""Site customisation: Z-segment handlers, field rules and a declarative local code map."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.errors import MappingError
from core.fhir import transaction_bundle
from mapping import MappingOptions, map_message
from mapping.context import Context
from mapping.hl7.parse import Segment
from mapping.site import CodeMapping, Site

MSH = "MSH|^~\\&|LAB|HOSP|SIDECAR|HOSP|20240305101500+0800||ORU^R01|CTRL-1|P|2.5.1"
PID = "PID|1||MRN-4711^^^HOSP^MR||ZHANG^WEI||19800215|M||2106-3^White^CDCREC"
OBX = "OBX|1|NM|GLU^Glucose^L||5.4|mmol/L|||||F"
ZPI = "ZPI|1|Y|Ward 7"


def text(*segments: str) -> str:
    return "\r".join([MSH, PID, *segments])


def test_z_segment_handler_adds_a_resource_and_is_not_reported():
    site = Site()

    @site.segment("ZPI")
    def vip_flag(segment: Segment, ctx: Context) -> list[dict[str, Any]] | None:
        patient = next(r for r in ctx.resources if r["resourceType"] == "Patient")
        patient.setdefault("meta", {})["tag"] = [{"system": "urn:site:flags", "code": "vip"}]
        return None

    mapped = map_message(text(ZPI), MappingOptions(site=site))
    (patient,) = [r for r in mapped.resources if r["resourceType"] == "Patient"]
    assert patient["meta"]["tag"] == [{"system": "urn:site:flags", "code": "vip"}]
    assert not [i for i in mapped.report if i.segment == "ZPI"]
    assert "ZPI" not in mapped.unmapped_segments
    # Without the site, the same Z-segment is reported.
    assert [i.segment for i in map_message(text(ZPI)).report if i.whole_segment] == ["ZPI"]


def test_field_rule_runs_and_clears_the_field_from_the_report():
    site = Site()
    seen: list[str] = []

    @site.field("PID", 10)
    def race(segment: Segment, ctx: Context) -> None:
        seen.append(segment.value(10))

    mapped = map_message(text(), MappingOptions(site=site))
    assert seen == ["2106-3"]
    assert not [i for i in mapped.report if i.segment == "PID"]


def test_handler_returning_a_non_resource_is_a_mapping_error():
    site = Site()
    site.segment("ZPI")(lambda segment, ctx: [{"no": "type"}])
    with pytest.raises(MappingError, match="site handler for ZPI"):
        map_message(text(ZPI), MappingOptions(site=site))


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_local_code_map_adds_the_standard_coding(tmp_path: Path, suffix: str) -> None:
    entry = {
        "field": "OBX-3",
        "local_system": "L",
        "local_code": "GLU",
        "system": "http://loinc.org",
        "code": "2345-7",
        "display": "Glucose",
    }
    path = tmp_path / f"codes{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"code": [entry]}), encoding="utf-8")
    else:
        path.write_text("[[code]]\n" + "".join(f'{k} = "{v}"\n' for k, v in entry.items()), encoding="utf-8")
    site = Site()
    site.load_code_map(path)
    mapped = map_message(text(OBX), MappingOptions(site=site))
    (observation,) = [r for r in mapped.resources if r["resourceType"] == "Observation"]
    codings = observation["code"]["coding"]
    assert codings[0] == {"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}
    assert codings[1]["code"] == "GLU"  # the local coding is kept
    transaction_bundle(mapped.resources)


def test_code_map_rejects_fields_it_cannot_place():
    with pytest.raises(ValueError, match="code maps support"):
        Site().add_code(CodeMapping("PID-8", "", "X", "http://example.org", "x"))
