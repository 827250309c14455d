"""Value-level helpers for DICOM de-identification: dummies, date shifts, ages, UIDs.

Kept apart from the walk in ``deidentify`` so each rule can be tested on its own. None of
these functions put the input value into an exception message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, timedelta
from typing import Final, cast

from pydicom.valuerep import STR_VR_REGEXES, VALIDATORS

from ..vault import Vault

# Dummy values for action D, chosen to be valid for the VR (length and character
# repertoire) so the output still validates when the attribute is Type 1.
DUMMY_TEXT: Final = "ANONYMIZED"  # fits SH/CS/AE (16 chars) and uses only CS characters
DUMMY_BY_VR: Final[dict[str, object]] = {
    "AE": DUMMY_TEXT,
    "AS": "000D",
    "CS": DUMMY_TEXT,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": DUMMY_TEXT,
    "LT": DUMMY_TEXT,
    "PN": DUMMY_TEXT,
    "SH": DUMMY_TEXT,
    "ST": DUMMY_TEXT,
    "TM": "000000",
    "UC": DUMMY_TEXT,
    "UR": "urn:x-deid:anonymized",
    "UT": DUMMY_TEXT,
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
    "AT": 0,
}
# Eight zero bytes are a whole number of values for every binary VR (OD and OV use 8-byte
# values); zero length would be invalid where the attribute is Type 1.
DUMMY_BINARY: Final = b"\x00" * 8
BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})

# Maximum value lengths (PS3.5 Table 6.2-1) of the text VRs that cleaning may rewrite.
TEXT_MAX: Final[dict[str, int | None]] = {
    "SH": 16,
    "LO": 64,
    "ST": 1024,
    "LT": 10240,
    "UT": None,
    "UC": None,
}

_DA = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")
_DT = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?")
_AS = re.compile(r"(\d{3})([DWMY])")
# Ages above 89 are identifying under HIPAA Safe Harbor; they are pooled into one bucket.
_MAX_AGE_YEARS: Final = 89
_AGE_BUCKET: Final = "090Y"
_DAYS_PER: Final = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def _shift(day: date, days: int) -> date | None:
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return None


def _make(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def shift_da(value: str, days: int) -> str | None:
    """A DA value (or a DA range ``A-B``) moved by ``days``; None if it is not a date."""
    value = value.strip()
    if "-" in value:
        parts = [shift_da(part, days) if part else "" for part in value.split("-")]
        if len(parts) != 2 or any(p is None for p in parts):
            return None
        return "-".join(p or "" for p in parts)
    match = _DA.fullmatch(value)
    if match is None:
        return None
    day = _make(int(match[1]), int(match[2]), int(match[3]))
    moved = _shift(day, days) if day else None
    return moved.strftime("%Y%m%d") if moved and moved.year >= 1 else None


def shift_dt(value: str, days: int) -> str | None:
    """A DT value moved by ``days``; time of day and UTC offset stay as they were.

    A year alone is kept (not identifying, and shifting it only adds noise); a year-month
    is shifted from mid-month, as ``deid.dates`` does for FHIR dates.
    """
    value = value.strip()
    match = _DT.fullmatch(value)
    if match is None:
        return None
    year, month, day, rest, offset = match[1], match[2], match[3], match[4], match[5]
    if month is None:
        return value
    if day is None:
        mid = _make(int(year), int(month), 15)
        moved = _shift(mid, days) if mid else None
        return moved.strftime("%Y%m") + (offset or "") if moved else None
    if rest is None and offset is None:
        return shift_da(year + month + day, days)
    parsed = _make(int(year), int(month), int(day))
    moved = _shift(parsed, days) if parsed else None
    return moved.strftime("%Y%m%d") + (rest or "") + (offset or "") if moved else None


def generalise_age(value: str) -> str:
    """An AS value, with ages over 89 years pooled into "090Y"; "" if unreadable."""
    match = _AS.fullmatch(value.strip())
    if match is None:
        return ""  # an unreadable age could be anything; dropping it is the safe side
    years = int(match[1]) * _DAYS_PER[match[2]] / _DAYS_PER["Y"]
    return _AGE_BUCKET if years > _MAX_AGE_YEARS else match.group()


def uid_hash(vault: Vault, uid: str) -> str:
    """A keyed-hash UID under the 2.25 (UUID-derived) root for ``uid``.

    The vault's resource-id HMAC gives 128 bits: as a decimal integer that is at most 39
    digits, so "2.25." + digits is at most 44 characters (limit 64). The same UID maps to
    the same result for every holder of the secret (across files, feeds and restarts);
    no patient scope, so references between studies of different patients stay intact.
    """
    uid = uid.strip("\x00 ")
    digest = vault.resource_id(None, "dicom-uid", uid)
    return f"2.25.{int(digest, 16)}"


# VRs whose values have a fixed shape (PS3.5 Table 6.2-1), checked when a value is kept:
# text there ("Logleakname" in a Study Time) is no time, and may be a name. AS is not
# here: a kept age goes through ``generalise_age``, which drops what it cannot read.
# DS and IS are checked for their characters only: an over-long number is common in the
# wild, holds nothing but digits, and is geometry a viewer needs.
CHECKED_VRS: Final = frozenset({"AE", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
_NUMBER_VRS: Final = frozenset({"DS", "IS"})
_VALID_CACHE: dict[tuple[str, bytes | str], bool] = {}
_VALID_CACHE_MAX: Final = 4096


def _valid_one(vr: str, value: str) -> bool:
    if vr in _NUMBER_VRS:
        return STR_VR_REGEXES[vr].match(value) is not None
    validator = cast(Callable[[str, str], tuple[bool, str]], VALIDATORS[vr])
    ok, _ = validator(vr, value)
    return ok


def valid_for_vr(vr: str, value: bytes | str) -> bool:
    """Whether every value of a multi-valued text element (raw bytes or decoded text) is
    what ``vr`` allows; pydicom's validators decide. Padding and surrounding spaces are
    insignificant and ignored; an empty value is valid."""
    key = (vr, value)
    known = _VALID_CACHE.get(key)
    if known is not None:
        return known
    if isinstance(value, bytes):
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return False  # every checked VR is a subset of ASCII
    else:
        text = value
    ok = all(_valid_one(vr, part.strip(" \x00")) for part in text.rstrip(" \x00").split("\\"))
    if len(value) <= 64:  # the values that repeat (codes, times, spacings), not blobs
        if len(_VALID_CACHE) >= _VALID_CACHE_MAX:
            _VALID_CACHE.clear()
        _VALID_CACHE[key] = ok
    return ok
