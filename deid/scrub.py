"""Free-text scrubbing: known identifying values first, then cheap patterns.

This is the walking-skeleton scrubber: it removes what the message itself told us is
identifying, plus the identifier shapes that are unambiguous enough to catch without a
model (e-mail addresses, phone numbers, Chinese resident ids and mobiles), and shifts
recognisable dates. A full EN/ZH named-entity scrubber is meant to slot in as further
passes of ``Scrubber.scrub``.

Each replacement is parked behind a private-use sentinel character until the end, so a
later pass can neither match inside a placeholder nor shift an already shifted date.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from core.errors import DeidError

from . import phi
from .dates import TEXT_DATE_PATTERNS, LooseDate, parse_loose_date, text_date
from .policy import PLACEHOLDERS

_SENTINEL_BASE = 0xF0000  # planes 15 and 16 are private use; NFKC leaves them alone
_SENTINEL_MAX = 0x10FFFF - _SENTINEL_BASE
_SENTINELS = re.compile("[\U000f0000-\U0010ffff]")

# 18-digit mainland resident identity number (the last character is a check digit or X).
_RESIDENT_ID = re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")
# The look-behinds in these patterns also let a match start only at the beginning of a
# run, which keeps them linear on long runs of word characters or digit groups.
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Mainland mobile, optionally with the +86 country code.
_CN_MOBILE = re.compile(r"(?<!\d)(?:\+?86[ -]?)?1[3-9]\d{9}(?!\d)")
# Digit groups joined by single separators, every group after the first at least two
# digits long. The look-arounds keep it off decimals ("3.14159265") and alphanumeric
# codes; the two-digit groups keep it off lists of lab values ("3.5 7.2 1.1"). The digit
# count is checked after matching.
_NUMBER_RUN = re.compile(
    r"(?<![0-9A-Za-z+.])(?<!\d[ .\-])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,5}\)[ .\-]?)?\d+(?:[ .\-]\d{2,})*"
    r"(?![0-9A-Za-z]|[.,]\d)"
)
_DECIMAL = re.compile(r"\d+[.,]\d+")
_PHONE_DIGITS = range(7, 16)  # E.164 numbers have at most 15 digits

_MIN_SIGNIFICANCE = 3
_MIN_DIGIT_RUN = 4


@dataclass(frozen=True)
class _Rule:
    length: int
    pattern: re.Pattern[str]
    kind: str
    date: LooseDate | None


class _Parked:
    """Replacement strings parked behind sentinels for one scrub call."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def park(self, replacement: str) -> str:
        if len(self.parts) > _SENTINEL_MAX:
            raise DeidError("text has too many identifiers to scrub")
        self.parts.append(replacement)
        return chr(_SENTINEL_BASE + len(self.parts) - 1)

    def restore(self, text: str) -> str:
        return _SENTINELS.sub(lambda m: self.parts[ord(m.group()) - _SENTINEL_BASE], text)


def _worth_scrubbing(value: str, kind: str, date: LooseDate | None) -> bool:
    if kind == "DATE" and date is not None and date.precision == "year":
        return False  # a year alone is not identifying, and "1980" would hit every 1980 date
    return phi.significance(value) >= _MIN_SIGNIFICANCE or phi.longest_digit_run(value) >= _MIN_DIGIT_RUN


class Scrubber:
    """Scrubs free text of one message; built once per message from its phi values."""

    def __init__(self, phi_values: Mapping[str, str]) -> None:
        rules: list[_Rule] = []
        for value, kind in phi.variants(phi_values):
            date = parse_loose_date(value) if kind == "DATE" else None
            if _worth_scrubbing(value, kind, date):
                # A DATE inside a longer number is not that date; anything else inside a
                # longer number still gives it away, so digits are bounded for DATE only.
                pattern = phi.value_pattern(value, bound_digits=kind == "DATE")
                rules.append(_Rule(len(value), pattern, kind, date))
        # Longest first, so "John Smith" becomes one [NAME] rather than "John" + "Smith";
        # ties are ordered by value and kind to keep the output deterministic.
        rules.sort(key=lambda r: (-r.length, r.pattern.pattern, r.kind))
        self._rules = tuple(rules)

    def scrub(self, text: str, days: int | None) -> str:
        """``text`` without identifiers; dates shifted by ``days`` (or "[DATE]" if None)."""
        text = _SENTINELS.sub("", phi.normalise_text(text))
        parked = _Parked()

        def fixed(replacement: str) -> Callable[[re.Match[str]], str]:
            return lambda _match: parked.park(replacement)

        def shifted(date: LooseDate | None) -> str:
            if date is None or days is None:
                return PLACEHOLDERS["DATE"]
            return date.shifted(days)

        # The unambiguous shapes go first, so a reported MRN found inside a mobile number
        # or resident id does not leave the rest of that number behind.
        text = _RESIDENT_ID.sub(fixed(PLACEHOLDERS["ID"]), text)
        text = _EMAIL.sub(fixed(PLACEHOLDERS["EMAIL"]), text)
        text = _CN_MOBILE.sub(fixed(PLACEHOLDERS["PHONE"]), text)
        for rule in self._rules:
            replacement = shifted(rule.date) if rule.kind == "DATE" else PLACEHOLDERS[rule.kind]
            text = rule.pattern.sub(fixed(replacement), text)

        def text_date_repl(match: re.Match[str]) -> str:
            date = text_date(match)
            return match.group() if date is None else parked.park(shifted(date))

        for pattern in TEXT_DATE_PATTERNS:
            text = pattern.sub(text_date_repl, text)

        def number_repl(match: re.Match[str]) -> str:
            if _DECIMAL.fullmatch(match.group()):
                return match.group()
            digits = phi.digit_count(match.group())
            if digits in _PHONE_DIGITS:
                return parked.park(PLACEHOLDERS["PHONE"])
            if digits > _PHONE_DIGITS.stop - 1:
                return parked.park(PLACEHOLDERS["ID"])
            return match.group()

        text = _NUMBER_RUN.sub(number_repl, text)
        return parked.restore(text)
