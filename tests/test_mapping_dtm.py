"""HL7 DTM/DT/TS/TM values to FHIR date, dateTime, instant and time (mapping.hl7.dtm)."""

from __future__ import annotations

import pytest

from core.errors import MappingError
from mapping.hl7.dtm import parse_dtm, to_date, to_date_time, to_instant, to_time, zone

UTC = zone("UTC")
BERLIN = zone("Europe/Berlin")
SHANGHAI = zone("Asia/Shanghai")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2014", "2014"),
        ("201410", "2014-10"),
        ("20141006", "2014-10-06"),
        ("2014100609", "2014-10-06T09:00:00+00:00"),
        ("201410060927", "2014-10-06T09:27:00+00:00"),
        ("20141006092712", "2014-10-06T09:27:12+00:00"),
        ("20141006092712.1", "2014-10-06T09:27:12.1+00:00"),
        ("20141006092712.1234", "2014-10-06T09:27:12.1234+00:00"),
        ("20141006092712+0700", "2014-10-06T09:27:12+07:00"),
        ("201203141259-0215", "2012-03-14T12:59:00-02:15"),
        ("20120711120510.2-0500", "2012-07-11T12:05:10.2-05:00"),
        ("20090713090030+0000", "2009-07-13T09:00:30+00:00"),
        ("20141006+0700", "2014-10-06"),  # a date has no zone in FHIR
    ],
)
def test_every_precision_is_kept(raw, expected):
    assert to_date_time(raw, UTC) == expected


def test_missing_offset_takes_the_default_zone_at_that_instant():
    # Berlin is +01:00 in winter and +02:00 in summer: the offset follows the date.
    assert to_date_time("20140130120000", BERLIN) == "2014-01-30T12:00:00+01:00"
    assert to_date_time("20140730120000", BERLIN) == "2014-07-30T12:00:00+02:00"
    assert to_date_time("20140730120000", SHANGHAI) == "2014-07-30T12:00:00+08:00"
    # An explicit offset always wins over the default zone.
    assert to_date_time("20140730120000-0500", SHANGHAI) == "2014-07-30T12:00:00-05:00"


def test_zero_month_or_day_ends_the_precision():
    assert to_date_time("19100000000000+0000", UTC) == "1910"
    assert to_date("19850700") == "1985-07"


@pytest.mark.parametrize(
    "raw",
    ["", "abc", "196203520", "20150230", "20141306", "2014100625", "201410061261", "20141006+1500", "0000"],
)
def test_impossible_values_give_none(raw):
    assert parse_dtm(raw) is None
    assert to_date_time(raw, UTC) is None


def test_birth_date_is_date_only():
    assert to_date("198808181126+0215") == "1988-08-18"
    assert to_date("19850101000000+0700") == "1985-01-01"


def test_instant_needs_a_time():
    assert to_instant("20141006092900+0700", UTC) == "2014-10-06T09:29:00+07:00"
    assert to_instant("200911231509", UTC) == "2009-11-23T15:09:00+00:00"
    assert to_instant("20141006", UTC) is None


def test_time_values():
    assert to_time("1230") == "12:30:00"
    assert to_time("123045.5") == "12:30:45.5"
    assert to_time("2560") is None


def test_unknown_zone_name_is_a_mapping_error():
    with pytest.raises(MappingError, match="IANA"):
        zone("Mars/Olympus_Mons")
