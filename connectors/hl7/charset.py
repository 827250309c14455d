"""Decode a raw message using its declared charset (MSH-18), repairing common mislabels.

Hospital systems often send bytes that do not match MSH-18: GB18030 labelled 8859/1 or
UTF-8, UTF-8 labelled 8859/1, or no label at all. Storing the raw bytes untouched and
recording which codec actually decodes them keeps the original evidence and lets every
later reader decode consistently: calling ``decode_message`` again with the returned
``charset`` as ``declared`` gives the same text.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_BOM = "\ufeff"
_UTF8_BOM = b"\xef\xbb\xbf"

# HL7 table 0211 (and spellings seen in the wild), keyed by _normalise(name).
_HL7_CHARSETS: dict[str, str | None] = {
    "ASCII": "ascii",
    "USASCII": "ascii",
    "ISOIR6": "ascii",
    **{f"8859{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
    "UNICODE": "utf-16",  # HL7's "UNICODE" is UCS-2, which UTF-16 decodes
    "UNICODEUTF8": "utf-8",
    "UNICODEUTF16": "utf-16",
    "UNICODEUTF32": "utf-32",
    "UTF8": "utf-8",
    "UTF16": "utf-16",
    "UTF32": "utf-32",
    # GB18030 is a superset of GBK and GB2312, and senders labelling GB2312 routinely
    # use GBK characters (rare characters in names), so all three decode as GB18030.
    "GB180302000": "gb18030",
    "GB18030": "gb18030",
    "GBK": "gb18030",
    "GB2312": "gb18030",
    "BIG5": "big5",
    "CNS116431992": None,  # EUC-TW: Python has no codec for it
    # Japanese sets are used through ISO 2022 code extension (escape sequences).
    "ISOIR14": "iso2022_jp",
    "ISOIR87": "iso2022_jp",
    "ISOIR159": "iso2022_jp_1",
    "KSX1001": "euc_kr",
    "KSC5601": "euc_kr",
    # DICOM-style names some modalities' HL7 interfaces reuse.
    "ISOIR100": "iso8859-1",
    "ISOIR101": "iso8859-2",
    "ISOIR144": "iso8859-5",
    "ISOIR192": "utf-8",
}

# Names codecs.lookup() knows that are not character sets.
_NOT_CHARSETS = frozenset(
    {
        "base64",
        "bz2",
        "hex",
        "quopri",
        "rot-13",
        "uu",
        "zlib",
        "idna",
        "punycode",
        "unicode-escape",
        "raw-unicode-escape",
        "undefined",
        "mbcs",
        "oem",
    }
)
_PUNCTUATION = re.compile(r"[\s_\-/.]+")
_HIGH_RUN = re.compile(rb"[\x80-\xff]+")

# Codecs that decode (nearly) any byte string, so a successful decode proves nothing.
_SINGLE_BYTE_PREFIXES = ("iso8859-", "cp125", "koi8", "mac-", "tis-620")
# Latin-script single-byte sets: text in them has isolated high bytes between ASCII
# letters, which is what tells it apart from double-byte CJK text.
_LATIN_SCRIPT = frozenset(
    {
        "iso8859-1",
        "iso8859-2",
        "iso8859-3",
        "iso8859-4",
        "iso8859-9",
        "iso8859-10",
        "iso8859-13",
        "iso8859-14",
        "iso8859-15",
        "iso8859-16",
        "cp1250",
        "cp1252",
        "cp1254",
        "cp1257",
    }
)
_WIDE = ("utf-16", "utf-32")

# Thresholds for "these bytes are GB18030 Chinese": most high bytes come in runs of two
# or more, and most decoded non-ASCII characters are CJK. Tuned on names and addresses;
# a message is rarely short enough for a single European name to tip it.
_MIN_PAIRED_HIGH_BYTES = 0.8
_MIN_CJK_CHARACTERS = 0.9


@dataclass(frozen=True)
class Decoded:
    text: str
    charset: str  # the Python codec actually used
    repaired: bool  # True when that is not what the declared (or default) label says


def _normalise(name: str) -> str:
    return _PUNCTUATION.sub("", name).upper()


def python_codec(hl7_name: str) -> str | None:
    """The Python codec for an HL7 charset name (or a Python codec name); None if unknown."""
    key = _normalise(hl7_name)
    if not key:
        return None
    if key in _HL7_CHARSETS:
        return _HL7_CHARSETS[key]
    try:
        info = codecs.lookup(hl7_name.strip())
    except LookupError:
        return None
    if info.name in _NOT_CHARSETS or not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def _canonical(codec: str) -> str:
    return codecs.lookup(codec).name


def _strip_bom(text: str) -> str:
    return text[1:] if text.startswith(_BOM) else text


def _looks_ascii_compatible(raw: bytes) -> bool:
    # peek_header only accepts messages whose MSH is ASCII bytes, so such a message can
    # never really be UTF-16/32 however it is labelled.
    return raw.lstrip(_UTF8_BOM).lstrip()[:3] in (b"MSH", b"FHS", b"BHS")


def _strict(raw: bytes, codec: str) -> str | None:
    if codec.startswith(_WIDE) and _looks_ascii_compatible(raw):
        return None
    try:
        return raw.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def _is_cjk(char: str) -> bool:
    point = ord(char)
    return 0x2E80 <= point <= 0x9FFF or 0xF900 <= point <= 0xFAFF or 0xFF00 <= point <= 0xFFEF


def _plausible_gb18030(raw: bytes) -> str | None:
    runs = _HIGH_RUN.findall(raw)
    high = sum(len(run) for run in runs)
    if not high:
        return None
    paired = sum(len(run) for run in runs if len(run) > 1)
    if paired < _MIN_PAIRED_HIGH_BYTES * high:
        return None
    text = _strict(raw, "gb18030")
    if text is None:
        return None
    non_ascii = [c for c in text if c > "\x7f" and c != _BOM]
    cjk = sum(1 for c in non_ascii if _is_cjk(c))
    return text if non_ascii and cjk >= _MIN_CJK_CHARACTERS * len(non_ascii) else None


def _detect(raw: bytes) -> tuple[str, str]:
    text = _strict(raw, "utf-8")
    if text is not None:
        return text, "utf-8"
    text = _plausible_gb18030(raw)
    if text is not None:
        return text, "gb18030"
    return raw.decode("iso8859-1"), "iso8859-1"


def _second_guess(raw: bytes, codec: str) -> tuple[str, str] | None:
    """A better codec for bytes that decoded "successfully" with a single-byte codec."""
    if not codec.startswith(_SINGLE_BYTE_PREFIXES) or raw.isascii():
        return None
    text = _strict(raw, "utf-8")
    if text is not None:
        # Non-ASCII text in a single-byte set is almost never also valid UTF-8.
        return text, "utf-8"
    if codec in _LATIN_SCRIPT:
        text = _plausible_gb18030(raw)
        if text is not None:
            return text, "gb18030"
    return None


def decode_message(raw: bytes, declared: str, default: str = "UTF-8") -> Decoded:
    label = declared.strip() or default
    codec = python_codec(label)
    if codec is not None:
        codec = _canonical(codec)
        text = _strict(raw, codec)
        if text is not None:
            better = _second_guess(raw, codec)
            if better is None:
                return Decoded(_strip_bom(text), codec, repaired=False)
            return Decoded(_strip_bom(better[0]), better[1], repaired=True)
    text, used = _detect(raw)
    return Decoded(_strip_bom(text), used, repaired=True)
