"""Decode a raw message using its declared charset (MSH-18), repairing common mislabels.

Hospital systems often send bytes that do not match MSH-18: GB18030 labelled 8859/1 or
UTF-8, UTF-8 labelled 8859/1, or no label at all. Storing the raw bytes untouched and
recording which codec actually decodes them keeps the original evidence and lets every
later reader decode consistently: calling ``decode_message`` again with the returned
``charset`` as ``declared`` gives the same text.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from connectors.hl7.header import MessageHeader
from connectors.hl7.senders import for_sender, sender_key

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
_HIGH_AS_H = bytes(ord("a") if byte < 0x80 else ord("h") for byte in range(256))
_HIGH_BYTES = bytes(range(0x80, 0x100))

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

# Legacy East Asian multi-byte sets. Their decoders accept many UTF-8 byte strings (UTF-8
# lead and continuation bytes are all valid lead/trail bytes), so a successful decode of
# non-ASCII bytes does not show that the label is right.
_CJK_MULTI_BYTE = frozenset(
    {
        "gb18030",
        "gbk",
        "gb2312",
        "big5",
        "big5hkscs",
        "cp950",
        "euc_kr",
        "cp949",
        "johab",
        "shift_jis",
        "cp932",
        "shift_jis_2004",
        "shift_jisx0213",
        "euc_jp",
        "euc_jis_2004",
        "euc_jisx0213",
    }
)
# Of those, the ones with no single-byte non-ASCII characters (Shift-JIS and EUC-JP have
# half-width katakana): in their text a lone high byte between ASCII bytes cannot be a
# character on its own, so a message made of such bytes is a single-byte set instead.
_DOUBLE_BYTE_ONLY = frozenset(
    {"gb18030", "gbk", "gb2312", "big5", "big5hkscs", "cp950", "euc_kr", "cp949", "johab"}
)
_GB = frozenset({"gb18030", "gbk", "gb2312"})

# Thresholds for "these bytes are GB18030 Chinese": most high bytes come in runs of two
# or more, and most decoded non-ASCII characters are CJK. Tuned on names and addresses;
# a message is rarely short enough for a single European name to tip it.
_MIN_PAIRED_HIGH_BYTES = 0.8
_MIN_CJK_CHARACTERS = 0.9
# Characters of Chinese text: CJK (radicals to ideographs, compatibility ideographs,
# fullwidth forms), punctuation, letterlike symbols (℃ №), number forms (Ⅱ), arrows, maths,
# circled numbers, and the GB2312 Latin-1 signs it uses: the separator of transliterated
# names (阿卜杜拉·买买提), signs of lab values and the pinyin letters of GB2312 (Lǚ, García).
_PINYIN = "āáǎàēéěèīíǐìōóǒòūúǔùǖǘǚǜüêɑńňɡ"
_NOT_CHINESE = re.compile(f"[^\x00-\x7f\u2010-\u24ff\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef·×÷±°§{_PINYIN}]")
# Share of GB2312 (everyday) characters above which a GB decode is real Chinese rather
# than UTF-8 bytes read as GB18030: those land on rare GBK extension characters about
# half the time, while real text is almost all GB2312 (a rare name character or two aside).
_MIN_GB2312_CHARACTERS = 0.8

# HL7 delimiters that GB18030 accepts as a trail byte. A GB decode that swallows one has
# paired a lone high byte (a Latin-1 letter, the end of a UTF-8 sequence) with the
# delimiter after it; real GB text practically never puts a raw delimiter byte there.
_DELIMITERS = ("|", "^", "~")

# Accented Latin letters with a two-byte UTF-8 form (Latin-1 letters, Extended-A and -B),
# and all accented Latin letters (adding Extended Additional: Vietnamese "ỗ", three bytes).
_LATIN_2 = "\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_LATIN_ALL = _LATIN_2 + "\u1e00-\u1eff"
# What a wrong decode produces and clinical text practically never contains. One or two
# GB18030 characters are valid UTF-8 surprisingly often (a two-character name about 3% of
# the time) and then read as these: C1 controls; Latin-1 symbols other than the few used
# in medicine and billing (° ± ² ³ µ · × ® ¥ …; not ÷), or two in a row; IPA and spacing
# modifiers; archaic Greek, Coptic, historic Cyrillic, the Cyrillic supplement and
# unassigned points of the Greek and Hebrew blocks; Armenian, Syriac, Thaana and NKo (the
# rest of the two-byte range, unlikely in a Chinese or European hospital); private use;
# specials; a combining mark on nothing; a Greek, Cyrillic, Hebrew or Arabic letter
# standing alone or next to a letter of another of these scripts; and accented Latin
# letters touching no other letter ("é", "ĠŁ" alone — European words have ASCII letters
# around their accented ones, Vietnamese "Đỗ" has a three-byte letter).
_SYMBOLS = "\xa1-\xbf\xd7\xf7"
_GREEK, _CYRILLIC, _HEBREW, _ARABIC = "\u0370-\u03ff", "\u0400-\u04ff", "\u0590-\u05ff", "\u0600-\u06ff"
_ODD_TEXT = re.compile(
    "[\x80-\x9f\xa4\xa6\xa8\xaa\xac\xad\xaf\xb4\xb6\xb8-\xba\xbc-\xbe\xf7\u0250-\u02ff"
    "\u0370-\u0383\u038b\u038d\u03a2\u03d8-\u03ef\u0460-\u0489\u0500-\u058f"
    "\u0590\u05c8-\u05cf\u05eb-\u05ee\u05f5-\u05ff\u0700-\u07ff"
    "\ue000-\uf8ff\ufff0-\ufffc\ufffe\uffff]"
    f"|[{_SYMBOLS}]{{2}}"
    "|(?<![A-Za-z])[\xa1\xab\xbb\xbf](?![A-Za-z])"
    f"|(?<![A-Za-z{_LATIN_ALL}])[\u0300-\u036f]"
    r"|(?<![^\W\d_])[\u0370-\u06ff](?![^\W\d_])"
    f"|[{_GREEK}][{_LATIN_2}{_CYRILLIC}{_HEBREW}{_ARABIC}]"
    f"|[{_CYRILLIC}][{_LATIN_2}{_GREEK}{_HEBREW}{_ARABIC}]"
    f"|[{_HEBREW}][{_LATIN_2}{_GREEK}{_CYRILLIC}{_ARABIC}]"
    f"|[{_ARABIC}][{_LATIN_2}{_GREEK}{_CYRILLIC}{_HEBREW}]"
    f"|[{_LATIN_2}][{_GREEK}{_CYRILLIC}{_HEBREW}{_ARABIC}]"
    f"|(?<![A-Za-z{_LATIN_ALL}])[{_LATIN_2}]+(?![A-Za-z{_LATIN_ALL}])"
)
# Every match of _ODD_TEXT starts on one of these: searching for them first keeps the
# common case (CJK or ASCII text, a few accented letters) to one fast scan.
_ODD_START = re.compile("[\x80-\u07ff\ue000-\uf8ff\ufff0-\uffff]")
# The same starts as UTF-8 bytes: two-byte sequences (leads C2-DF), private use (EE xx xx,
# EF 80-A3 xx) and specials (EF BF B0-BF).
_TWO_BYTE_LEADS = bytes(range(0xC2, 0xE0)) + b"\xee"
_PRIVATE_OR_SPECIAL = re.compile(rb"\xef(?:[\x80-\xa3]|\xbf[\xb0-\xbf])")
# Ideographs, kana and hangul come from three-byte UTF-8 sequences, which bytes in another
# encoding almost never form by accident.
_EAST_ASIAN = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3\uf900-\ufaff]")
# One non-ASCII character stuck to an ASCII letter: how accented letters of a European
# word look when read as GB18030 ("M眉ller"). Chinese words rarely come one character long
# next to a Latin letter.
_GLUED = re.compile(r"(?<=[A-Za-z])[^\x00-\x7f](?![^\x00-\x7f])|(?<![^\x00-\x7f])[^\x00-\x7f](?=[A-Za-z])")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")


@dataclass(frozen=True)
class Decoded:
    text: str
    charset: str  # the Python codec actually used
    repaired: bool  # True when that is not what the declared (or default) label says


def _normalise(name: str) -> str:
    return _PUNCTUATION.sub("", name).upper()


@functools.lru_cache(maxsize=512)  # called per message with a handful of distinct labels
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


@functools.lru_cache(maxsize=512)
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


def _count_non_ascii(text: str) -> int:
    return len(text) - len(text.encode("ascii", "ignore"))


def _count_gb2312(text: str) -> int:
    """How many non-ASCII characters of ``text`` GB2312 (everyday Chinese) has."""
    unencodable = text.encode("gb2312", "replace").count(b"?") - text.count("?")
    return _count_non_ascii(text) - unencodable


def _natural(text: str) -> bool:
    odd = _ODD_TEXT.match
    return not any(odd(text, start.start()) for start in _ODD_START.finditer(text))


def _natural_utf8(raw: bytes, text: str) -> bool:
    """``_natural(text)`` for ``text`` decoded from UTF-8 ``raw``, fast for CJK text."""
    # _ODD_START characters are the two-byte sequences, private use and specials; bytes
    # that have none of their lead bytes are natural without a character-by-character scan.
    if len(raw.translate(None, _TWO_BYTE_LEADS)) == len(raw) and not _PRIVATE_OR_SPECIAL.search(raw):
        return True
    return _natural(text)


def _mostly_paired(raw: bytes) -> bool:
    """Whether most high bytes come in runs of two or more, as double-byte text does."""
    # Byte counts instead of a regex: this runs on every GB18030 message, and CPython's
    # regex engine costs tens of microseconds per kilobyte where these cost one or two.
    shape = b"a" + raw.translate(_HIGH_AS_H)  # "a" for an ASCII byte, "h" for a high one
    high = shape.count(b"h")
    lone = shape.count(b"ah") - shape.count(b"ahh")  # runs of high bytes minus longer runs
    return high > 0 and high - lone >= _MIN_PAIRED_HIGH_BYTES * high


def _swallows_delimiters(raw: bytes, text: str) -> bool:
    return any(raw.count(d.encode()) != text.count(d) for d in _DELIMITERS)


def _latin1_reading_wins(raw: bytes, text: str) -> bool:
    """Whether ``raw``, which a double-byte codec decoded as ``text``, is Latin-1 text.

    Latin-1 letters are lone high bytes between ASCII ones, which a double-byte decoder
    pairs with the next ASCII byte ("Müller" reads as "M" + one GBK character + "ler").
    Real GB text can have lone high bytes too (玥 is AB 68), but its Latin-1 reading is
    then rarely natural ("王^玥" reads "Íõ^«h").
    """
    if len(raw) - len(raw.translate(None, _HIGH_BYTES)) == 2 * _count_non_ascii(text):
        return False  # the usual case, settled cheaply: every character is two high bytes
    return not _mostly_paired(raw) and _natural(raw.decode("iso8859-1"))


def _plausible_gb18030(raw: bytes) -> str | None:
    """The GB18030 text of bytes that look like Chinese in GB18030, else None."""
    text = _strict(raw, "gb18030")
    if text is None or _swallows_delimiters(raw, text) or _latin1_reading_wins(raw, text):
        return None
    text = _strip_bom(text)
    non_ascii = _count_non_ascii(text)
    if not non_ascii or non_ascii - len(_NOT_CHINESE.findall(text)) < _MIN_CJK_CHARACTERS * non_ascii:
        return None
    return text


def _convincing_gb(raw: bytes, text: str) -> bool:
    """Whether a GB decode reads as Chinese rather than as another script's UTF-8."""
    text = _strip_bom(text)
    non_ascii = _count_non_ascii(text)
    if not non_ascii:
        return True
    if _swallows_delimiters(raw, text):
        return False
    if _count_gb2312(text) < _MIN_GB2312_CHARACTERS * non_ascii:
        return False
    return 2 * len(_GLUED.findall(text)) < len(_NON_ASCII_RUN.findall(text))


def _gb_beats_odd_utf8(raw: bytes) -> bool:
    # Both tests: Cyrillic or Greek UTF-8 is also plausible GB18030 (paired high bytes,
    # all CJK), but lands on rare GBK characters, which _convincing_gb rejects.
    gb = _plausible_gb18030(raw)
    return gb is not None and _convincing_gb(raw, gb)


def _utf8_wins(raw: bytes) -> str | None:
    """The UTF-8 text when strict UTF-8 is the best reading of the bytes, else None.

    Valid UTF-8 with multi-byte sequences is rarely accidental; the exception is short
    GB18030 text, which then reads as odd characters ("θĬ", "½", a lone "ж") while its
    GB18030 reading is convincing Chinese.
    """
    text = _strict(raw, "utf-8")
    if text is None:
        return None
    return text if not _gb_beats_odd_utf8(raw) or _natural_utf8(raw, text) else None


def _trusted(raw: bytes, codec: str, text: str) -> bool:
    """Whether a successful decode with the declared codec is the right reading.

    Each rule that distrusts ``codec`` tests the same predicate by which ``_detect`` then
    picks the alternative, and ``_detect``'s choice is trusted when declared in turn: the
    stored charset decodes the stored bytes again to the same text, unrepaired.
    """
    if raw.isascii():
        return True
    if codec == "utf-8":
        # The hot path. Real UTF-8 text of any length rarely decodes as GB18030 at all,
        # so that check goes first and the text is looked at only when it does.
        return not _gb_beats_odd_utf8(raw) or _natural_utf8(raw, text)
    if codec.startswith(_SINGLE_BYTE_PREFIXES):
        # These decode any bytes, so the decode itself proves nothing; look for better.
        if _utf8_wins(raw) is not None:
            return False
        return not (codec in _LATIN_SCRIPT and _plausible_gb18030(raw) is not None)
    if codec in _CJK_MULTI_BYTE:
        utf8 = _utf8_wins(raw)
        if utf8 is not None:
            if _EAST_ASIAN.search(utf8):
                return False  # GB text forms three-byte UTF-8 sequences only by rare accident
            if codec in _GB and not _convincing_gb(raw, text):
                return False  # a European word in UTF-8 ("M眉ller" is "Müller")
        return not (codec in _DOUBLE_BYTE_ONLY and _latin1_reading_wins(raw, text))
    return True


def _detect(raw: bytes) -> tuple[str, str]:
    text = _utf8_wins(raw)
    if text is not None:
        return text, "utf-8"
    text = _plausible_gb18030(raw)
    if text is not None:
        return text, "gb18030"
    # Latin-1 decodes anything and maps each byte to one character: nothing is lost.
    return raw.decode("iso8859-1"), "iso8859-1"


def decode_message(raw: bytes, declared: str, default: str = "UTF-8") -> Decoded:
    """Decode ``raw`` by its MSH-18 ``declared`` charset, or ``default`` when that is empty.

    ``repaired`` is True exactly when the text was not decoded with that charset: the bytes
    do not decode with it, decode implausibly (see ``_trusted``), or the label is unknown.
    An unknown label falls back to ``default`` before detection: it is the operator's word
    for what this sender really uses.
    """
    label = declared.strip() or default
    codec = python_codec(label)
    fallback = codec is None and label != default
    if fallback:
        codec = python_codec(default)
    if codec is not None:
        codec = _canonical(codec)
        text = _strict(raw, codec)
        if text is not None and _trusted(raw, codec, text):
            return Decoded(_strip_bom(text), codec, repaired=fallback)
    # A known label that does not fit goes to detection, not to the default: the sender
    # said what it meant, and the bytes say otherwise.
    text, used = _detect(raw)
    return Decoded(_strip_bom(text), used, repaired=True)


# -- per-sender defaults ------------------------------------------------------------------


def _require_known(charset: object, what: str) -> None:
    # Settings come from TOML and the environment: check types too, not just names.
    if not isinstance(charset, str) or python_codec(charset) is None:
        raise ValueError(f"unknown charset {charset!r} for {what}")


@dataclass(frozen=True)
class CharsetPolicy:
    """The charset to assume when MSH-18 is empty: per sender, else ``default``.

    ``by_sender`` keys are ``"APP"`` or ``"APP|FACILITY"``, matched as
    ``connectors.hl7.senders`` says (first component, any case; the longer key wins).
    Every charset is checked at construction, so a typo in the configuration stops
    start-up instead of mis-decoding messages.
    """

    default: str = "UTF-8"
    # Excluded from the hash: a mapping is not hashable; equality still compares it.
    by_sender: Mapping[str, str] = field(default_factory=dict, hash=False)
    _lookup: Mapping[tuple[str, str], str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _require_known(self.default, "the default")
        lookup: dict[tuple[str, str], str] = {}
        for key, charset in self.by_sender.items():
            sender = sender_key(key, "charset_by_sender")
            _require_known(charset, f"sender {key!r}")
            if sender in lookup and python_codec(lookup[sender]) != python_codec(charset):
                raise ValueError(f"charset_by_sender names {key!r} twice with different charsets")
            lookup[sender] = charset
        # Frozen means frozen: copies, so later changes to the caller's dict do not leak in.
        object.__setattr__(self, "by_sender", MappingProxyType(dict(self.by_sender)))
        object.__setattr__(self, "_lookup", MappingProxyType(lookup))

    def default_for(self, header: MessageHeader) -> str:
        return for_sender(self._lookup, header) or self.default
