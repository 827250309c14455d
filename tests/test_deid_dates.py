from datetime import date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deid.dates import is_fhir_date, parse_loose_date, shift_fhir_date


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("1980-03-12", 7, "1980-03-19"),
        ("1980-03-12", -13, "1980-02-28"),
        ("2024-02-28", 1, "2024-02-29"),
        ("2023-12-31", 1, "2024-01-01"),
        ("2024-03-05T08:30:00+08:00", 7, "2024-03-12T08:30:00+08:00"),
        ("2024-03-05T23:59:59.123Z", -5, "2024-02-29T23:59:59.123Z"),
        ("2024-03-05T08:30:00-05:00", 30, "2024-04-04T08:30:00-05:00"),
        ("2024-03", 10, "2024-03"),
        ("2024-03", 17, "2024-04"),
        ("2024-03", -15, "2024-02"),
        ("2024-01", -20, "2023-12"),
        ("1980", 30, "1980"),
    ],
)
def test_shift_keeps_precision_and_time_zone(value, days, expected):
    assert shift_fhir_date(value, days) == expected


@pytest.mark.parametrize("value", ["19800312", "12/03/1980", "1980-3-12", "", "1980-03-12 08:00", "abcd"])
def test_non_fhir_dates_are_refused_without_echoing_them(value):
    with pytest.raises(ValueError) as info:
        shift_fhir_date(value, 3)
    if value:
        assert value not in str(info.value)


def test_is_fhir_date():
    assert is_fhir_date("2024-03-05T08:30:00+08:00")
    assert is_fhir_date("2024")
    assert not is_fhir_date("20240305")
    assert not is_fhir_date("final")


@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(min_value=-365, max_value=365),
)
def test_shift_preserves_intervals_exactly(a, b, days):
    fmt = "%Y-%m-%dT%H:%M:%S+08:00"
    sa = datetime.fromisoformat(shift_fhir_date(a.strftime(fmt), days))
    sb = datetime.fromisoformat(shift_fhir_date(b.strftime(fmt), days))
    assert sb - sa == b.replace(microsecond=0) - a.replace(microsecond=0)
    assert (sa.date() - a.date()).days == days


@pytest.mark.parametrize(
    ("raw", "shifted_by_2"),
    [
        ("19800312", "1980-03-14"),
        ("198003121430", "1980-03-14 14:30"),
        ("20240305083000+0800", "2024-03-07 08:30:00"),
        ("198003", "1980-03"),
        ("1980", "1980"),
        ("1980-03-12", "1980-03-14"),
    ],
)
def test_raw_hl7_and_iso_dates_are_parsed(raw, shifted_by_2):
    parsed = parse_loose_date(raw)
    assert parsed is not None
    assert parsed.shifted(2) == shifted_by_2


@pytest.mark.parametrize("raw", ["19801312", "March 12", "12345", "99999999"])
def test_implausible_raw_dates_are_not_parsed(raw):
    assert parse_loose_date(raw) is None


def test_month_precision_shifts_the_fifteenth():
    parsed = parse_loose_date("198003")
    assert parsed is not None and parsed.day == date(1980, 3, 15)
