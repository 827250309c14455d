"""Shifting FHIR dates and dates written in free text.

A shift moves the calendar date only. The time of day and the time-zone suffix are kept
verbatim: adding whole days to a local time with an explicit offset is exact, so
intervals between any two shifted values of one patient are preserved to the second.
Precision is kept too (a year-month stays a year-month; a year stays as it is, since a
year alone is not identifying and shifting it would only add noise).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta

_FHIR_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?P<time>T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def is_fhir_date(value: str) -> bool:
    """Whether ``value`` has the shape of a FHIR date, dateTime or instant."""
    return _FHIR_DATE.fullmatch(value) is not None


def shift_fhir_date(value: str, days: int) -> str:
    """Shift a FHIR date/dateTime/instant by ``days``, keeping precision and time zone.

    Raises ``ValueError`` (without echoing the value) if it is not a FHIR date.
    """
    match = _FHIR_DATE.fullmatch(value)
    if match is None:
        raise ValueError("not a FHIR date, dateTime or instant")
    year = int(match["y"])
    if match["m"] is None:
        return value
    month = int(match["m"])
    if match["d"] is None:
        # Shifting the middle of the month keeps the result in a plausible month for
        # offsets up to about two weeks, and stays deterministic for larger ones.
        moved = _shift(date(year, month, 15), days)
        return f"{moved.year:04d}-{moved.month:02d}"
    moved = _shift(date(year, month, int(match["d"])), days)
    return moved.isoformat() + (match["time"] or "")


def _shift(day: date, days: int) -> date:
    try:
        return day + timedelta(days=days)
    except OverflowError:
        raise ValueError("shifted date out of range") from None


@dataclass(frozen=True)
class LooseDate:
    """A date recognised in text or in a raw HL7 value, with the precision it was given."""

    day: date
    precision: str  # "year", "month" or "day"
    time: str = ""  # "HH:MM" or "HH:MM:SS" when the source carried a time of day

    def shifted(self, days: int) -> str:
        if self.precision == "year":
            return f"{self.day.year:04d}"
        moved = _shift(self.day, days)
        if self.precision == "month":
            return f"{moved.year:04d}-{moved.month:02d}"
        return moved.isoformat() + (f" {self.time}" if self.time else "")


def make_date(year: int, month: int, day: int) -> date | None:
    # Plausibility bounds keep lab values and counters that happen to be 8 digits long
    # from being read as dates.
    if not 1850 <= year <= 2199:
        return None
    try:
        return date(year, month, day)
    except ValueError:
        return None


_HL7_DTM = re.compile(
    r"(?P<y>\d{4})(?:(?P<m>\d{2})(?:(?P<d>\d{2})(?:(?P<hh>\d{2})(?P<mm>\d{2})?(?P<ss>\d{2})?"
    r"(?:\.\d{1,4})?)?)?)?(?:[+-]\d{4})?"
)
_ISO_LIKE = re.compile(
    r"(?P<y>\d{4})([-/.])(?P<m>\d{1,2})\2(?P<d>\d{1,2})(?:[T ](?P<hh>\d{2}):(?P<mm>\d{2}))?"
)


def parse_loose_date(raw: str) -> LooseDate | None:
    """Read an HL7 DTM (``YYYY[MM[DD[HH[MM[SS]]]]][+ZZZZ]``) or an ISO-like date.

    This is for the raw forms the mapper reports as DATE phi values, so that they can be
    replaced by their shifted form wherever they appear in text.
    """
    raw = raw.strip()
    if (m := _HL7_DTM.fullmatch(raw)) is not None:
        year = int(m["y"])
        if m["m"] is None:
            return LooseDate(date(year, 1, 1), "year") if 1850 <= year <= 2199 else None
        if m["d"] is None:
            day = make_date(year, int(m["m"]), 1)
            return LooseDate(day.replace(day=15), "month") if day else None
        day = make_date(year, int(m["m"]), int(m["d"]))
        if day is None:
            return None
        time = ""
        if m["hh"] is not None:
            time = f"{m['hh']}:{m['mm'] or '00'}" + (f":{m['ss']}" if m["ss"] else "")
        return LooseDate(day, "day", time)
    if (m := _ISO_LIKE.fullmatch(raw)) is not None:
        day = make_date(int(m["y"]), int(m["m"]), int(m["d"]))
        if day is None:
            return None
        time = f"{m['hh']}:{m['mm']}" if m["hh"] else ""
        return LooseDate(day, "day", time)
    return None


_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_MONTH_NAME = (
    r"(?P<mon>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)

# Dates as they appear in free text. Digit look-arounds stop a match inside a longer
# number (an 18-digit resident id contains a birth date, a phone number may look like one).
TEXT_DATE_PATTERNS: tuple[re.Pattern[str], ...] = (
    # 2024-03-05, 2024/3/5, 2024.03.05
    re.compile(r"(?<!\d)(?P<y>\d{4})([-/.])(?P<m>\d{1,2})\2(?P<d>\d{1,2})(?!\d)"),
    # 2024年3月5日
    re.compile(r"(?<!\d)(?P<y>\d{4})\s*年\s*(?P<m>\d{1,2})\s*月\s*(?P<d>\d{1,2})\s*[日号]?"),
    # 20240305, optionally followed by an HL7 time 1430 or 143000
    re.compile(
        r"(?<!\d)(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})(?:(?P<hh>\d{2})(?P<mm>\d{2})(?P<ss>\d{2})?)?(?!\d)"
    ),
    # 03/05/2024 or 3-5-2024 (month first, as written in the US, unless the first number
    # cannot be a month), 05.03.2024 (day first, as written in Europe)
    re.compile(r"(?<![\d/.\-])(?P<a>\d{1,2})(?P<sep>[/\-])(?P<b>\d{1,2})(?P=sep)(?P<y>\d{4})(?!\d)"),
    re.compile(r"(?<![\d/.\-])(?P<d>\d{1,2})\.(?P<m>\d{1,2})\.(?P<y>\d{4})(?!\d)"),
    # March 5, 2024; Mar. 5th 2024
    re.compile(
        rf"(?<![A-Za-z]){_MONTH_NAME}\.?[ \t]+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?,?[ \t]+(?P<y>\d{{4}})(?!\d)",
        re.IGNORECASE,
    ),
    # 5 March 2024, 5-Mar-2024, 05 MAR 2024
    re.compile(
        rf"(?<!\d)(?P<d>\d{{1,2}})(?:st|nd|rd|th)?[ \t\-]+{_MONTH_NAME}\.?,?[ \t\-]+(?P<y>\d{{4}})(?!\d)",
        re.IGNORECASE,
    ),
    # 2024年3月 (a month: still part of a birth date, shifted at month precision)
    re.compile(r"(?<!\d)(?P<y>\d{4})\s*年\s*(?P<m>\d{1,2})\s*月(?!\s*\d)"),
)


def text_date(match: re.Match[str]) -> LooseDate | None:
    """The date a TEXT_DATE_PATTERNS match denotes, or None if it is not a real date."""
    groups = match.groupdict()
    year = int(groups["y"])
    if groups.get("mon"):
        month = _MONTHS[groups["mon"][:3].casefold()]
    elif groups.get("a"):
        first, second = int(groups["a"]), int(groups["b"])
        month, day_of_month = (first, second) if first <= 12 else (second, first)
        day = make_date(year, month, day_of_month)
        return LooseDate(day, "day") if day else None
    else:
        month = int(groups["m"])
    if groups.get("d") is None:
        day = make_date(year, month, 1)
        return LooseDate(day.replace(day=15), "month") if day else None
    day = make_date(year, month, int(groups["d"]))
    if day is None:
        return None
    time = ""
    if groups.get("hh"):
        hh, mm = int(groups["hh"]), int(groups["mm"])
        if hh > 23 or mm > 59:
            return None
        time = f"{groups['hh']}:{groups['mm']}" + (f":{groups['ss']}" if groups.get("ss") else "")
    return LooseDate(day, "day", time)


def written_forms(day: date) -> list[str]:
    """How a known date (a birth date) is written in text, beyond the ISO and HL7 forms."""
    y, m, d = day.year, day.month, day.day
    names = ("January", "February", "March", "April", "May", "June", "July", "August",
             "September", "October", "November", "December")  # fmt: skip
    full, short = names[m - 1], names[m - 1][:3]
    forms = [
        f"{m:02d}/{d:02d}/{y}", f"{m}/{d}/{y}", f"{d:02d}/{m:02d}/{y}", f"{d}/{m}/{y}",
        f"{d:02d}.{m:02d}.{y}", f"{d}.{m}.{y}", f"{m:02d}-{d:02d}-{y}", f"{d:02d}-{m:02d}-{y}",
        f"{y}/{m}/{d}", f"{y}.{m}.{d}", f"{y}-{m}-{d}", f"{y}/{m:02d}/{d:02d}", f"{y}.{m:02d}.{d:02d}",
        f"{m:02d}/{d:02d}/{y % 100:02d}", f"{d:02d}/{m:02d}/{y % 100:02d}", f"{m}/{d}/{y % 100:02d}",
        f"{full} {d}, {y}", f"{short} {d}, {y}", f"{short}. {d}, {y}", f"{full} {d} {y}", f"{short} {d} {y}",
        f"{d} {full} {y}", f"{d} {short} {y}", f"{d:02d} {short} {y}", f"{d}-{short}-{y}",
        f"{d:02d}-{short}-{y}",
        f"{d:02d}{short}{y}", f"{y}年{m}月{d}日", f"{y}年{m:02d}月{d:02d}日", f"{y}年{m}月{d}号",
    ]  # fmt: skip
    return list(dict.fromkeys(forms))
