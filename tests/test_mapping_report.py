"""The mapping report: unmapped segments (Z-segments always) and unmapped fields of mapped ones."""

from __future__ import annotations

import pytest

from core.errors import MappingError
from mapping import map_message
from mapping.coverage import report_lines
from mapping.model import UnmappedItem

MSH = "MSH|^~\\&|APP|HOSP|SIDECAR|HOSP|20240305101500+0800|SECRET|ADT^A01|CTRL-1|P|2.5.1"
PID = "PID|1||MRN-4711^^^HOSP^MR||ZHANG^WEI||19800215|M||2106-3^White^CDCREC"


def test_z_segment_and_unexpected_segment_are_reported():
    text = "\r".join([MSH, "EVN|A01", PID, "ZPI|1|VIP^Very important", "XYZ|1|something", "ZZZ|1"])
    mapped = map_message(text)
    whole = [(i.segment, i.index) for i in mapped.report if i.whole_segment]
    assert ("ZPI", 3) in whole
    assert ("XYZ", 4) in whole
    assert ("ZZZ", 5) in whole  # a Z-segment is reported even with nothing but a set ID
    assert mapped.unmapped_segments == ("EVN", "ZPI", "XYZ")


def test_unmapped_fields_of_a_mapped_segment_are_reported():
    mapped = map_message("\r".join([MSH, PID]))
    assert UnmappedItem("PID", 1, (10,)) in mapped.report


def test_report_lines_name_segments_and_fields_never_values():
    mapped = map_message("\r".join([MSH, PID, "ZPI|1|VIP^Very important"]))
    lines = report_lines(mapped)
    assert "PID (segment 1): fields PID-10 not mapped" in lines
    assert "ZPI (segment 2): not mapped" in lines
    joined = "\n".join(lines)
    for value in ("White", "VIP", "MRN-4711", "ZHANG"):
        assert value not in joined


def test_the_report_is_built_on_first_use_only(monkeypatch):
    import mapping.message

    calls: list[int] = []
    real = mapping.message.build_report  # type: ignore[attr-defined]

    def counting(ctx):
        calls.append(1)
        return real(ctx)

    monkeypatch.setattr(mapping.message, "build_report", counting)
    mapped = map_message("\r".join([MSH, PID, "ZPI|1|VIP^Very important"]))
    assert calls == []  # the pipeline never reads it: no cost on the hot path
    assert UnmappedItem("ZPI", 2) in mapped.report
    assert mapped.report is mapped.report and calls == [1]


def test_a_failing_report_is_a_mapping_error_that_quotes_no_data(monkeypatch):
    import mapping.message

    def broken(_ctx):
        raise ValueError("ZHANG")

    monkeypatch.setattr(mapping.message, "build_report", broken)
    mapped = map_message("\r".join([MSH, PID]))
    with pytest.raises(MappingError, match=r"internal mapping error ValueError at mapping\.") as caught:
        _ = mapped.report
    assert "ZHANG" not in str(caught.value)
