"""HL7 v2 escape sequences (v2.x chapter 2, section 2.7 / 2.10) resolved into plain text.

Hand-written rather than python-hl7's ``hl7.util.unescape`` because that one logs the whole
field value on a malformed sequence (patient data in logs), maps ``\\.br\\`` to a bare CR and
decodes ``\\Xhh\\`` byte by byte as Latin-1, which breaks UTF-8 multi-byte characters.

Supported: ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\P\\`` (delimiters), ``\\H\\ \\N\\`` (highlighting:
dropped), ``\\Xhh..\\`` (bytes: UTF-8 when valid, else Latin-1), the formatting commands of FT
(``.br .sp .in .ti .sk .fi .nf .ce``) and ``\\Zxx\\``, ``\\Cxxyy\\``, ``\\Mxxyyzz\\`` (locally
defined / character-set switches: dropped, the text is already decoded). Anything else between
two escape characters is not an escape sequence in practice (a lone backslash in free text), so
it is kept literally instead of being swallowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The separators a message declares in MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""  # v2.7+, optional fifth character of MSH-2


_HEX = re.compile(r"[0-9A-Fa-f]+")
_FORMAT_REPEAT = re.compile(r"\.(sp|in|ti|sk)([+-]?\d*)")


@lru_cache(maxsize=32)
def _sequence_pattern(escape: str) -> re.Pattern[str]:
    esc = re.escape(escape)
    # A sequence never spans lines and is short; bounding it keeps a stray escape character in a
    # long text from pairing with another one pages later.
    return re.compile(f"{esc}([^{esc}\\r\\n]{{1,64}}){esc}")


def _decode_hex(digits: str) -> str | None:
    if len(digits) % 2 or not _HEX.fullmatch(digits):
        return None
    raw = bytes.fromhex(digits)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _formatting(command: str) -> str | None:
    if command == ".br":
        return "\n"
    if command in (".fi", ".nf"):
        return ""
    if command == ".ce":
        return "\n"
    match = _FORMAT_REPEAT.fullmatch(command)
    if match is None:
        return None
    kind, count_text = match.groups()
    count = abs(int(count_text)) if count_text not in ("", "+", "-") else 1
    count = min(count, 20)  # a corrupt count must not blow up a string
    return "\n" * count if kind == "sp" else " " * count


def _replacement(body: str, delims: Delimiters) -> str | None:
    """The text for one escape sequence body, or None when it is not a known sequence."""
    simple = {
        "F": delims.field,
        "S": delims.component,
        "T": delims.subcomponent,
        "R": delims.repetition,
        "E": delims.escape,
        "H": "",
        "N": "",
    }
    if body in simple:
        return simple[body]
    if body == "P" and delims.truncation:
        return delims.truncation
    head = body[0]
    if head == "X":
        return _decode_hex(body[1:])
    if head == ".":
        return _formatting(body)
    if head in "ZCM" and len(body) > 1 and body[1:].isalnum():
        return ""
    return None


def unescape(value: str, delims: Delimiters) -> str:
    """Resolve the escape sequences in one leaf value (a component or subcomponent)."""
    if delims.escape not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        text = _replacement(match.group(1), delims)
        return match.group(0) if text is None else text

    return _sequence_pattern(delims.escape).sub(substitute, value)
