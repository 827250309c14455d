"""HL7 DT/DTM/TS values to FHIR date, dateTime and instant, keeping the sender's precision.

HL7: ``YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]``. FHIR dateTime needs seconds and a zone as
soon as a time is present, so a time is zero-filled to seconds and given the sender's offset,
or else the offset that ``options.default_timezone`` has at that local instant (DST-aware).

Hand-written: ``datetime.strptime`` cannot express "as precise as the sender was", and
python-hl7's ``parse_datetime`` drops the precision and rejects the partial dates real feeds
send. Unparseable values give ``None``: a wrong date is worse than a missing one.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.errors import MappingError

_DTM = re.compile(
    r"(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<f>\d{1,9})\d*)?"
    r"(?P<z>[+-]\d{4})?"
)


@dataclass(frozen=True, slots=True)
class Dtm:
    """A parsed DTM. Unset parts are None; ``offset`` is minutes east of UTC when given."""

    year: int
    month: int | None = None
    day: int | None = None
    hour: int | None = None
    minute: int | None = None
    second: int | None = None
    fraction: str = ""
    offset: int | None = None

    @property
    def has_time(self) -> bool:
        return self.hour is not None

    def date(self) -> str:
        """FHIR ``date`` (no time, no zone) at the sender's precision."""
        text = f"{self.year:04d}"
        if self.month is not None:
            text += f"-{self.month:02d}"
            if self.day is not None:
                text += f"-{self.day:02d}"
        return text

    def date_time(self, default_zone: ZoneInfo) -> str:
        """FHIR ``dateTime``: a date, or a time zero-filled to seconds with a zone."""
        if not self.has_time:
            return self.date()
        minute = self.minute or 0
        second = self.second or 0
        offset = self.offset
        if offset is None:
            local = datetime(self.year, self.month or 1, self.day or 1, self.hour or 0, minute, second)
            utc_offset = local.replace(tzinfo=default_zone).utcoffset() or timedelta(0)
            offset = int(utc_offset.total_seconds() // 60)
        sign = "+" if offset >= 0 else "-"
        hours, minutes = divmod(abs(offset), 60)
        fraction = f".{self.fraction}" if self.fraction else ""
        return (
            f"{self.date()}T{self.hour:02d}:{minute:02d}:{second:02d}{fraction}"
            f"{sign}{hours:02d}:{minutes:02d}"
        )

    def instant(self, default_zone: ZoneInfo) -> str | None:
        """FHIR ``instant`` needs a time; a bare date cannot be one."""
        return self.date_time(default_zone) if self.has_time else None


def _in_range(value: int | None, low: int, high: int) -> bool:
    return value is None or low <= value <= high


@lru_cache(maxsize=4096)  # a message repeats its times (OBR-7 for every OBX); Dtm is immutable
def parse_dtm(raw: str) -> Dtm | None:
    """Parse an HL7 DT/DTM/TS value; None when it is not a real date.

    A month or day of ``00`` (sent for "unknown") ends the precision there instead of failing.
    A TS value's second component (degree of precision, pre-v2.6) is ignored by the caller
    passing only the first component.
    """
    match = _DTM.fullmatch(raw.strip())
    if match is None:
        return None
    g = match.groupdict()
    parts: list[int | None] = [int(g[k]) if g[k] is not None else None for k in ("mo", "d", "h", "mi", "s")]
    # Truncate at an all-zero month/day: "19100000" means "some day in 1910".
    for i in (0, 1):
        if parts[i] == 0:
            parts[i:] = [None] * (len(parts) - i)
            g["f"] = None
            break
    month, day, hour, minute, second = parts
    year = int(g["y"])
    if year == 0 or not _in_range(month, 1, 12) or not _in_range(hour, 0, 23):
        return None
    if not _in_range(minute, 0, 59) or not _in_range(second, 0, 59):
        return None
    if day is not None and month is not None and day > calendar.monthrange(year, month)[1]:
        return None
    offset = None
    if g["z"] is not None:
        zone = g["z"]
        off_h, off_m = int(zone[1:3]), int(zone[3:5])
        if off_h > 14 or off_m > 59:
            return None
        offset = (off_h * 60 + off_m) * (1 if zone[0] == "+" else -1)
    fraction = (g["f"] or "") if second is not None else ""
    return Dtm(year, month, day, hour, minute, second, fraction, offset)


@lru_cache(maxsize=16)
def zone(name: str) -> ZoneInfo:
    """The IANA zone for ``MappingOptions.default_timezone``; a bad name is a MappingError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise MappingError("default timezone is not a known IANA zone name") from exc


@lru_cache(maxsize=4096)  # strings in, a string out: a message repeats its times
def to_date(raw: str) -> str | None:
    parsed = parse_dtm(raw)
    return parsed.date() if parsed else None


@lru_cache(maxsize=4096)  # strings in, a string out (ZoneInfo instances are cached per name)
def to_date_time(raw: str, default_zone: ZoneInfo) -> str | None:
    parsed = parse_dtm(raw)
    return parsed.date_time(default_zone) if parsed else None


@lru_cache(maxsize=4096)
def to_instant(raw: str, default_zone: ZoneInfo) -> str | None:
    parsed = parse_dtm(raw)
    return parsed.instant(default_zone) if parsed else None


_TM = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,9})\d*)?(?:[+-]\d{4})?")


def to_time(raw: str) -> str | None:
    """HL7 TM ``HH[MM[SS[.S+]]]`` to FHIR ``time`` (which has no zone)."""
    match = _TM.fullmatch(raw.strip())
    if match is None:
        return None
    hour, minute, second, fraction = match.groups()
    h, m, s = int(hour), int(minute or 0), int(second or 0)
    if h > 23 or m > 59 or s > 59:
        return None
    return f"{h:02d}:{m:02d}:{s:02d}" + (f".{fraction}" if fraction else "")
