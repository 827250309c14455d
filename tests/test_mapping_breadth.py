"""Issue 19: the breadth report, and the share of the IG's mapped fields implemented here.

``mapping/data/ig_segment_fields.json`` is the IG's side of the report: per segment, the fields
one of the IG's segment maps (``../shared/spec/v2-to-fhir/segments``) gives a FHIR target. It
is derived from those CSVs, and recorded again with

    .venv/bin/python -m tests.test_mapping_breadth --record
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from mapping import map_message
from mapping.breadth import Breadth, ig_fields, implemented_fields
from tests.corpus import shared_file

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "mapping" / "data" / "ig_segment_fields.json"

# The segments issue 19 names, whole: every field the IG maps must be read by a rule here.
WHOLE_SEGMENTS = ("NK1", "ROL", "IN1", "AL1", "DG1", "PR1", "PV1", "PV2", "PD1")
# And the staff and organisation fields (XCN, XON, NDL, XAD, XTN of them) of the other segments.
STAFF_FIELDS = {
    "ORC": frozenset({12, 21, 22, 23, 24}),
    "OBR": frozenset({16, 32, 34, 35}),
    "OBX": frozenset({15, 16, 23, 24, 25}),
    "TXA": frozenset({9, 10}),
}


def fields_from_the_ig() -> dict[str, list[int]]:
    """Per segment, the field numbers of every IG segment-map row with a FHIR target."""
    found: dict[str, set[int]] = defaultdict(set)
    folder = shared_file("spec", "v2-to-fhir", "v2-to-FHIR Map Inventory - Segment.csv").parent / "segments"
    for path in sorted(folder.glob("*.csv")):
        with path.open(encoding="utf-8") as handle:
            for row in list(csv.reader(handle))[2:]:
                field = re.fullmatch(r"([A-Z][A-Z0-9]{2})-(\d+)", row[1].strip()) if len(row) > 9 else None
                if field and row[9].strip():
                    found[field[1]].add(int(field[2]))
    return {name: sorted(numbers) for name, numbers in sorted(found.items())}


def test_the_packaged_table_is_the_igs():
    assert {name: sorted(numbers) for name, numbers in ig_fields().items()} == fields_from_the_ig()


def test_every_ig_mapped_field_of_the_named_segments_is_implemented():
    wanted = {name: ig_fields()[name] for name in WHOLE_SEGMENTS}
    wanted |= {name: ig_fields()[name] & numbers for name, numbers in STAFF_FIELDS.items()}
    assert all(STAFF_FIELDS[name] <= ig_fields()[name] for name in STAFF_FIELDS)  # the IG maps them
    missing = {name: sorted(numbers - implemented_fields(name)) for name, numbers in wanted.items()}
    implemented = sum(len(numbers) - len(missing[name]) for name, numbers in wanted.items())
    total = sum(len(numbers) for numbers in wanted.values())
    assert implemented / total == 1.0, {name: gaps for name, gaps in missing.items() if gaps}


SAMPLE = (
    "MSH|^~\\&|LAB|GENHOSP|SIDECAR|GENHOSP|20260301081500||ORU^R01|CTRL-BR-1|P|2.5.1\r"
    "PID|1||MRN-B1^^^GENHOSP^MR||Quill^Ada||19800101|F\r"
    "OBR|1|P1|F1|2345-7^Glucose^LN|||20260301080000\r"
    "OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L|||||F|||20260301080000\r"
    "ZXT|1|local\r"
)


def test_breadth_tallies_mapped_unmapped_and_ig_only_fields():
    breadth = Breadth()
    breadth.add(map_message(SAMPLE))
    breadth.add(map_message(SAMPLE.replace("CTRL-BR-1", "CTRL-BR-2")))
    obr = breadth.segments["OBR"]
    assert (obr.seen, obr.mapped) == (2, 2)
    assert breadth.segments["ZXT"].mapped == 0 and breadth.segments["ZXT"].unread[2] == 2
    lines = breadth.lines()
    assert lines[0] == "breadth: 2 messages mapped, 0 failed"
    zxt = next(line for line in lines if line.startswith("ZXT:"))
    assert "no rule 2(2x)" in zxt and "IG maps" not in zxt  # no IG map has a Z-segment
    read, total = breadth.ig_share()
    assert 0 < read <= total
    assert lines[-1].endswith(f"{read} of {total} ({100 * read / total:.1f}%)")


def test_an_ig_mapped_field_no_rule_reads_is_named_as_such():
    # MSH-7 has an IG target (Bundle.timestamp) and no rule here reads it.
    assert 7 in ig_fields()["MSH"] and 7 not in implemented_fields("MSH")
    breadth = Breadth()
    breadth.add(map_message(SAMPLE))
    msh = next(line for line in breadth.lines() if line.startswith("MSH:"))
    assert re.search(r"IG maps, not mapped here [^;]*\b7\(1x\)", msh), msh


def test_convert_report_over_a_folder_prints_the_breadth(tmp_path):
    folder = tmp_path / "feeds"
    (folder / "lab").mkdir(parents=True)
    (folder / "lab" / "a.hl7").write_text(SAMPLE, encoding="utf-8")
    (folder / "b.hl7").write_text(SAMPLE.replace("CTRL-BR-1", "CTRL-BR-3"), encoding="utf-8")
    (folder / "broken.hl7").write_text("not hl7 at all", encoding="utf-8")
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "sidecar", "convert", "--report", "--out", str(out), str(folder)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr  # the broken file fails, the others convert
    assert sorted(p.name for p in out.iterdir()) == ["b.json", "lab__a.json"]
    assert "breadth: 2 messages mapped, 1 failed" in run.stderr
    assert re.search(r"^OBX: seen 2, mapped 2; fields mapped ", run.stderr, re.MULTILINE)
    assert "IG-mapped fields with content that a rule mapped:" in run.stderr


@pytest.mark.parametrize("name", WHOLE_SEGMENTS)
def test_the_table_knows_the_named_segments(name):
    assert ig_fields()[name]


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    source = "HL7 v2-to-FHIR IG segment maps (../shared/spec/v2-to-fhir/segments): fields with a FHIR target"
    TABLE.write_text(json.dumps({"source": source, "fields": fields_from_the_ig()}, indent=1) + "\n")
    print(f"recorded {TABLE}")
