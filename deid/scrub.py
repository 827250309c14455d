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

import functools
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date

from core.errors import DeidError

from . import names, phi, prefilter
from .budget import MAX_KNOWN_SURNAMES, Budget, OverBudget
from .dates import TEXT_DATE_PATTERNS, LooseDate, parse_loose_date, text_date, written_forms
from .policy import PLACEHOLDERS

_SENTINEL_BASE = 0xF0000  # planes 15 and 16 are private use; NFKC leaves them alone
_SENTINEL_MAX = 0x10FFFF - _SENTINEL_BASE
_SENTINELS = re.compile("[\U000f0000-\U0010ffff]")

# Kinds the message itself never reports, with their placeholders. SSNs and resident ids
# are ids; links and network addresses get their own type so the text stays readable.
_URL_PLACEHOLDER = "[URL]"
_IP_PLACEHOLDER = "[IP]"

# 18-digit mainland resident identity number (the last character is a check digit or X).
# The check digit is not verified on purpose: a mistyped id is still an id. The same goes
# for the 15-digit ids issued before 1999.
_RESIDENT_ID = re.compile(r"(?<!\d)\d{17}[\dXx](?![\dA-Za-z])|(?<!\d)\d{15}(?!\d)")
_URL = re.compile(
    r"(?<![A-Za-z])(?:(?:https?|s?ftp|file|wss?|dicom|dicomweb)://|www\.)[^\s<>\"'\u3000-\u303f\uff01-\uff5e]+",
    re.IGNORECASE,
)
_URL_TRAILING = ".,;:!?)]}'\""
_IPV4 = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)"
)
_IPV6_CANDIDATE = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:]{2,39}(?![\w:])")
# US social security number as written (3-2-4); nine bare digits are caught as a number run.
_SSN = re.compile(r"(?<![\d\-])\d{3}-\d{2}-\d{4}(?![\d\-])")
# A labelled identifier: "MRN: A123456", "病历号：0012345", "Accession # CT-2024-0042".
_ID_LABEL = re.compile(
    r"(?=[A-Za-z\u4e00-\u9fff])(?:(?<![A-Za-z])(?i:MRN|MR\s*#|MR\s*No|medical\s+record(?:\s+(?:number|no))?|patient\s+id|pt\s+id|"
    r"hospital\s+(?:number|no)|ID\s*No|SSN|SS\s*#|social\s+security(?:\s+(?:number|no))?|"
    r"NHS(?:\s+(?:number|no))?|account(?:\s+(?:number|no))?|acct|accession(?:\s+(?:number|no))?|acc\s*#|"
    r"visit(?:\s+(?:number|no))?|encounter(?:\s+(?:number|no))?|insurance(?:\s+(?:id|number|no))?|"
    r"policy(?:\s+(?:number|no))?|member\s+id|passport(?:\s+(?:number|no))?|licen[cs]e(?:\s+(?:number|no))?|"
    r"ID|case(?:\s+(?:number|no)))(?![A-Za-z])\.?"
    r"|病历号|病案号|住院号|门诊号|登记号|就诊号|就诊卡号|卡号|医保号|医保卡号|社保号|身份证号码|身份证号|身份证|"
    r"证件号码|证件号|检查号|影像号|标本号|条码号|申请单号|流水号|档案号|护照号|ID号)"
    # Possessive blanks: an id cannot start with one, and giving some back made a label
    # followed by a long run of blanks cost the square of the run.
    r"[ \t]*+(?:[:：#=]|(?i:number|no\.?))?[ \t]*+"
    r"(?P<id>(?=[A-Za-z\-]{0,6}\d)[A-Za-z\d][A-Za-z\d\-/]{2,30}[A-Za-z\d])"
)
_MIN_LABELLED_ID_DIGITS = 3
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


class _Lazy:
    """A rule's pattern, compiled on first use: the pre-check rules most rules out for most
    texts, and compiling is what a new patient's values used to cost most.

    Equal when the pattern it stands for is (a ``ValuePattern`` by its look-around form,
    an ``re.Pattern`` by its text and flags), so rules are de-duplicated as before."""

    __slots__ = ("_build", "_compiled", "_key", "pattern")

    def __init__(
        self, pattern: str, key: tuple[str, str, int], build: Callable[[], re.Pattern[str] | phi.ValuePattern]
    ) -> None:
        self.pattern = pattern
        self._key = key
        self._build = build
        self._compiled: re.Pattern[str] | phi.ValuePattern | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Lazy) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def get(self) -> re.Pattern[str] | phi.ValuePattern:
        compiled = self._compiled
        if compiled is None:
            compiled = self._compiled = self._build()
        return compiled


@functools.lru_cache(maxsize=2048)
def _compile(pattern: str, flags: int) -> re.Pattern[str]:
    # re's own cache holds 512 patterns, which a few hundred patients' rules would share.
    return re.compile(pattern, flags)


def _regex(pattern: str, flags: int = 0) -> _Lazy:
    return _Lazy(pattern, ("re", pattern, flags), lambda: _compile(pattern, flags))


@dataclass(frozen=True)
class _Rule:
    length: int
    pattern: _Lazy
    kind: str
    date: LooseDate | None
    # Literals one of which (all of its strings) a text must contain for the pattern to be
    # able to match it; None: no such pre-check, always run (see deid.prefilter).
    triggers: tuple[prefilter.Prepared, ...] | None = field(compare=False, default=None)
    in_group: bool = field(compare=False, default=False)  # only group "x" is the value


def _triggers(*triggers: prefilter.Trigger) -> tuple[prefilter.Prepared, ...] | None:
    # A literal with a sentinel character could match a placeholder parked by an earlier
    # pass, which the text before scrubbing does not show: such a rule always runs.
    if any(prefilter.has_private_use(s) for trigger in triggers for s in trigger):
        return None
    return prefilter.prepare(triggers)


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


def _replace_group(match: re.Match[str], group: str, replacement: str) -> str:
    """``match`` with only ``group`` replaced (the rest of the match was context)."""
    whole, offset = match.group(), match.start()
    return whole[: match.start(group) - offset] + replacement + whole[match.end(group) - offset :]


def _replace_spans(text: str, spans: list[tuple[int, int]], parked: _Parked) -> str:
    """``text`` with each of the ordered, non-overlapping ``spans`` replaced by [NAME]."""
    pieces, last = [], 0
    for start, end in spans:
        if start < last:
            continue
        pieces += [text[last:start], parked.park(PLACEHOLDERS["NAME"])]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def _url_repl(match: re.Match[str], parked: _Parked) -> str:
    url = match.group()
    end = len(url.rstrip(_URL_TRAILING))
    # A closing bracket that the URL opened is part of it ("...wiki/X_(y)"); counted once,
    # not again per bracket (a URL of 100,000 brackets took seconds).
    opened, closed = url.count("(", 0, end), url.count(")", 0, end)
    while url[end : end + 1] == ")" and opened > closed:
        end, closed = end + 1, closed + 1
    return parked.park(_URL_PLACEHOLDER) + url[end:]


def _is_ipv6(candidate: str) -> bool:
    if candidate.count(":") < 2 or ("::" not in candidate and candidate.count(":") != 7):
        return False
    if "::" in candidate and len(candidate.replace(":", "")) < 2:
        return False  # "::" or "a::" in prose is not an address worth a placeholder
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


_CJK_CHAR = r"[\u3400-\u4dbf\u4e00-\u9fff]"
_ADDRESS_PATTERNS: tuple[re.Pattern[str], ...] = (
    # After a cue, up to the end of the clause: "家住北京市朝阳区某某路1号",
    # "Address: 1 Main St, Town"; not when a known address was already replaced there.
    re.compile(
        r"(?:住址|地址|家庭住址|现住址|户籍地址|家住|现住|现居|住在|居住于|居住在|居住地|籍贯)"
        r"[ \t]*+[:：]?+[ \t]*+"  # possessive, as in _ID_LABEL: an address starts with neither
        r"(?P<addr>[^\s,;，。；:：\n\r\U000f0000-\U0010ffff][^,;，。；\n\r]{1,60}?)(?=[,;，。；\n\r]|$)"
    ),
    re.compile(
        r"(?<![A-Za-z])(?i:address|addr|lives at|lived at|resides at|residing at|residence)[ \t]*+:?+[ \t]*+"
        r"(?P<addr>[^\s,;:\n\r\U000f0000-\U0010ffff][^;\n\r]{1,80}?)"
        r"(?=[;\n\r]|\.(?:\s|$)|,[ \t]*(?i:tel|phone|mobile|email|dob|mrn)|$)"
    ),
    # A Chinese street address without a cue: "中山路100号", "幸福小区3栋2单元501室".
    re.compile(
        rf"(?P<addr>{_CJK_CHAR}{{2,8}}?(?:省|市|区|县|镇|乡)?{_CJK_CHAR}{{1,8}}?(?:大街|大道|路|街|巷|弄|胡同)"
        rf"\d+号(?:院|楼)?(?:\d+(?:栋|号楼|幢|单元|室|层|号))*)"
    ),
    re.compile(
        rf"(?P<addr>{_CJK_CHAR}{{2,8}}?(?:小区|花园|公寓|新村|大厦)\d+(?:栋|号楼|幢)(?:\d+(?:单元|室|层|号))*)"
    ),
    # An English street address: "77 Larkspur Lane", "1200 N. Elm Street, Apt 4B".
    re.compile(
        r"(?<![\w.])(?P<addr>\d{1,6}[ \t]+(?:[NSEW]\.?[ \t]+)?(?:[A-Z][a-z]+[ \t]+){1,3}"
        r"(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|Boulevard|Blvd|Way|Court|Ct|Place|Pl|Terrace|"
        r"Circle|Cir|Highway|Hwy|Parkway|Pkwy|Square|Sq)\b\.?"
        r"(?:,?[ \t]+(?:Apt|Unit|Suite|Ste|#)\.?[ \t]*\w+)?"
        r"(?:,[ \t]*[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+)?,?[ \t]+[A-Z]{2}[ \t]+\d{5}(?:-\d{4})?)?)"
    ),
)


_GIVEN_BEFORE_NAME = re.compile(
    r"(?<![A-Za-z'\-])((?:Mc|Mac|O')?[A-Z][a-z]+(?:-[A-Z][a-z]+)?)[ \t]+([\U000f0000-\U0010ffff])"
)

_CJK_TITLES = (
    "先生", "女士", "小姐", "某某", "某", "医生", "医师", "大夫", "主任", "护士长", "护士", "老师", "阿姨",
    "师傅", "太太", "夫人", "老人", "同志", "教授", "院长", "科长", "家属", "之子", "之女", "之妻", "之夫",
)  # fmt: skip
# 老X / 小X for a known surname X, except where that is an ordinary word.
_FAMILIAR_WORDS = frozenset(
    {"小于", "小时", "小叶", "小关", "小结", "小米", "小宋", "老师", "老年", "老化", "老人", "老龄"}
)
_INITIAL_CUE = r"(?:(?<![A-Za-z])(?i:initials|pt|patient|signed|by|cc|per)[:. \t]+)"
_CLINICAL_INITIALS = frozenset(
    """
    CT MR MRI ECG EKG EEG EMG CBC BMP CMP LFT RFT ABG COPD CHF CKD CAD DVT PE UTI URI TB HIV HBV
    HCV HPV ICU CCU ER ED OR PET BMI BP HR RR GCS DNR NPO PRN BID TID QID IV IM SC PO GI GU ENT
    OB GYN RUL RML RLL LUL LLL LAD RCA LCX EF AF VF VT SVT AKI ARDS
""".split()  # noqa: SIM905
)


def _cjk(value: str) -> bool:
    if value.isascii():
        return False
    return any("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in value)


def _known_surnames(phi_values: Mapping[str, str], found: list[tuple[str, str]]) -> set[str]:
    """Chinese surnames of the people this message names (``found``: its phi.variants)."""
    compound, single = names.chinese_surnames()
    surnames: set[str] = set()
    for raw, kind in phi_values.items():
        # "family, given" is how the mapper reports a name with both parts (mapping.phi).
        family, comma, _ = phi.normalise_text(raw).partition(",")
        if kind == "NAME" and comma and 1 <= len(family.strip()) <= 2 and _cjk(family):
            surnames.add(family.strip())
    for value, kind in found:
        if kind != "NAME" or not _cjk(value):
            continue
        for part in re.split(r"[\s,]+", value):
            if not part or not _cjk(part):
                continue
            if part in compound or part in single:
                surnames.add(part)
            elif len(part) >= 3 and part[:2] in compound:
                surnames.add(part[:2])
            elif len(part) >= 2 and part[0] in single and len(part) <= 3:
                surnames.add(part[0])
    return surnames


def _latin_name_parts(phi_values: Mapping[str, str]) -> set[tuple[str, str, str]]:
    """(family, given, middle) of each Latin-script person named, from the "family, given" form."""
    triples: set[tuple[str, str, str]] = set()
    names_seen = [phi.normalise_text(v) for v, k in phi_values.items() if k == "NAME"]
    full = {" ".join(v.split()).casefold() for v in names_seen}
    # "given middle family" forms by (given, family), the last one met winning as when each
    # name was compared with all of them (a message reporting 15,000 names: minutes).
    middles: dict[tuple[str, str], str] = {}
    for candidate in full:
        parts = candidate.split()
        if len(parts) == 3:
            middles[(parts[0], parts[2])] = parts[1]
    for value in names_seen:
        if "," not in value or _cjk(value):
            continue
        family, _, given = (p.strip() for p in value.partition(","))
        if not re.fullmatch(r"[A-Za-z][A-Za-z'\-]*(?: [A-Za-z][A-Za-z'\-]*)*", family + " " + given):
            continue
        triples.add((family, given, middles.get((given.casefold(), family.casefold()), "")))
    return triples


def _date_forms_pattern(forms: list[str]) -> str:
    # One pattern for all forms of a date, longest first; dates are ASCII, so the
    # boundaries are too (value_pattern's wider letter class is slow to compile).
    bodies = [
        r"\s*".join(re.escape(part) for part in form.split()) for form in sorted(forms, key=len, reverse=True)
    ]
    return rf"(?<![0-9A-Za-z])(?:{'|'.join(bodies)})(?![0-9A-Za-z])"


@functools.lru_cache(maxsize=4096)
def _date_rule(day: date) -> _Rule:
    # Cached by day: the same days recur in message after message (today's visits, a
    # patient's birth date); compiled only for a text that may hold the date.
    pattern = _date_forms_pattern(written_forms(day))
    # Every written form holds the day of the month and either the year or "/" and its
    # last two digits, each inside one whitespace-free part (tests/test_deid_prefilter.py).
    y, d = day.year, str(day.day)
    triggers = _triggers((str(y), d), (f"/{y % 100:02d}", d))
    date_ = LooseDate(day, "day")
    return _Rule(len(pattern), _regex(pattern, re.IGNORECASE), "DATE", date_, triggers)


@functools.lru_cache(maxsize=2048)
def _name_rules(family: str, given: str, middle: str) -> tuple[_Rule, ...]:
    """The rules for one "family, given" name: initial + family, family + initial, initials."""
    g, f = given[0].upper(), family[0].upper()
    fam = re.escape(family)
    found: list[tuple[str, int, prefilter.Trigger, bool]] = [
        (rf"(?<![A-Za-z]){g}\.?[ \t]*{fam}(?![A-Za-z])", re.IGNORECASE, (family,), False),
        (rf"(?<![A-Za-z]){fam},?[ \t]+{g}\.?(?![A-Za-z])", re.IGNORECASE, (family,), False),
    ]
    initials = [g + f] + ([g + middle[0].upper() + f] if middle else [])
    for ini in initials:
        dotted = r"\.[ \t]?".join(ini) + r"\."
        found.append((rf"(?<![A-Za-z]){dotted}", 0, (ini[0] + ".",), False))
        if len(ini) >= 3 and ini not in _CLINICAL_INITIALS:
            found.append((rf"(?<![A-Za-z]){ini}(?![A-Za-z])", 0, (ini,), False))
        elif ini not in _CLINICAL_INITIALS:
            # Two letters alone are too common ("JS" could be anything): only after a cue.
            found.append((rf"{_INITIAL_CUE}(?P<x>{ini})(?![A-Za-z])", 0, (ini,), True))
    # A middle initial that is a regex character makes the initials no literal (or no
    # pattern at all): then they are compiled now, as they always were, and always run.
    plain = all(re.escape(c) == c for ini in initials for c in ini)
    rules = []
    for pattern, flags, trigger, in_group in found:
        lazy = _regex(pattern, flags)
        if not plain:
            lazy.get()
        triggers = _triggers(trigger) if plain else None
        rules.append(_Rule(len(pattern), lazy, "NAME", None, triggers, in_group))
    return tuple(rules)


@functools.lru_cache(maxsize=2048)
def _surname_rules(surnames: tuple[str, ...]) -> tuple[_Rule, ...]:
    """Chinese surname + title ("王先生", "王某") and the familiar forms ("老王")."""
    alternatives = "|".join(map(re.escape, surnames))
    titles = "|".join(map(re.escape, _CJK_TITLES))
    pattern = rf"(?:{alternatives})(?:{titles})(?![日时地院处年月天种些])"
    rules = [_Rule(len(pattern), _regex(pattern), "NAME", None, _triggers(*((s,) for s in surnames)))]
    familiar = [p + s for s in surnames if len(s) == 1 for p in "老小阿" if p + s not in _FAMILIAR_WORDS]
    if familiar:
        pattern = rf"(?:{'|'.join(familiar)})(?![\d.])"
        rules.append(_Rule(len(pattern), _regex(pattern), "NAME", None, _triggers(*((w,) for w in familiar))))
    return tuple(rules)


@dataclass(frozen=True)
class _Names:
    """What the scrubber takes from the NAME values of a message (and nothing else)."""

    rules: tuple[_Rule, ...]  # initials, surname + title, familiar forms
    surnames: frozenset[str]  # Chinese surnames of the people named
    cjk_names: frozenset[str]  # Chinese names reported as one word
    index: tuple[prefilter.Prepared, ...] | None  # the surnames as triggers


@functools.lru_cache(maxsize=2048)
def _names(names: tuple[str, ...]) -> _Names:
    # Keyed by the NAME values in order: everything here depends on them alone, and a
    # patient's next message names the same people.
    phi_values = dict.fromkeys(names, "NAME")
    found = list(phi.variants(phi_values))
    rules: list[_Rule] = []
    for family, given, middle in _latin_name_parts(phi_values):
        rules += _name_rules(family, given, middle)
    surnames = _known_surnames(phi_values, found)
    if len(surnames) > MAX_KNOWN_SURNAMES:
        # They make one alternation, which sre tries one by one at every character of a
        # text: 20,000 of them held a pass over 200 KB for seconds. The reason holds none.
        raise OverBudget(f"the message names more than {MAX_KNOWN_SURNAMES:,} Chinese surnames")
    if surnames:
        rules += _surname_rules(tuple(sorted(surnames, key=lambda x: (-len(x), x))))
    cjk_names = frozenset(value for value, _ in found if _cjk(value) and " " not in value)
    return _Names(tuple(rules), frozenset(surnames), cjk_names, _triggers(*((s,) for s in surnames)))


@functools.lru_cache(maxsize=8192)
def _day(value: str) -> date | None:
    """The day a DATE value names, if it names one to the day."""
    parsed = parse_loose_date(value)
    return parsed.day if parsed is not None and parsed.precision == "day" else None


@functools.lru_cache(maxsize=8192)
def _known_rule(value: str, kind: str) -> _Rule | None:
    """The rule for one known value (a variant), or None if it is too short to scrub."""
    date = parse_loose_date(value) if kind == "DATE" else None
    if not _worth_scrubbing(value, kind, date):
        return None
    # A DATE inside a longer number is not that date; anything else inside a longer number
    # still gives it away, so digits are bounded for DATE only.
    bound = kind == "DATE"
    pattern = phi.value_pattern_text(value, bound_digits=bound)
    lazy = _Lazy(pattern, ("value", pattern, 0), lambda: phi.cached_value_pattern(value, bound_digits=bound))
    return _Rule(len(value), lazy, kind, date, _triggers(tuple(value.split())))


def _rule_order(rule: _Rule) -> tuple[int, str, str]:
    # Longest first, so "John Smith" becomes one [NAME] rather than "John" + "Smith";
    # ties are ordered by value and kind to keep the output deterministic.
    return -rule.length, rule.pattern.pattern, rule.kind


_NO_NAMES: frozenset[str] = frozenset()
_SURNAMES = -1  # the index target of the known Chinese surnames


class Scrubber:
    """Scrubs free text of one message; built once per message from its phi values.

    Keeps no state between ``scrub`` calls (patterns compiled on first use aside). What
    it is built from is cached per value (rules, names, days), not per set of values: a
    message's set holds its own order numbers and times, so it never recurs."""

    def __init__(self, phi_values: Mapping[str, str]) -> None:
        rules: list[_Rule] = []
        days = set()
        for value, kind in phi.variant_list(phi_values):
            if (rule := _known_rule(value, kind)) is not None:
                rules.append(rule)
            if kind == "DATE" and (day := _day(value)) is not None:
                days.add(day)
        # Forms of known values that are not literally in the message: other date formats,
        # initials, and Chinese surname + title ("王先生", "王某", "老王").
        rules += [_date_rule(day) for day in sorted(days)]
        names = _names(tuple(raw for raw, kind in phi_values.items() if kind == "NAME"))
        rules += names.rules
        # In the order found: sorted (and de-duplicated) per text among the live ones only,
        # which keeps the order the whole set sorts into, at the cost of a few rules.
        self._rules = tuple(rules)
        self._surnames = names.surnames
        self._cjk_names = names.cjk_names
        # What a text must contain for a rule, or the known surnames, to make a difference;
        # a text without any of it gets the scrub of a message without phi values.
        entries = [(i, rule.triggers) for i, rule in enumerate(self._rules)]
        if names.surnames:
            entries.append((_SURNAMES, names.index))
        self._index = prefilter.LiteralIndex(entries)

    def scrub(self, text: str, days: int | None, budget: Budget | None = None) -> str:
        """``text`` without identifiers; dates shifted by ``days`` (or "[DATE]" if None).

        ``budget``: the message's (deid.budget); the text is admitted to it before it is
        normalised (a text over the cap is refused unread), and again for what NFKC adds
        (one character can become 18), and each pass over it is spent from it."""
        if budget is not None:
            budget.admit(len(text))
        norm, folded = _prepared(text)
        if budget is not None and len(norm) > len(text):
            budget.admit(len(norm) - len(text))
        live = self._index.live(folded, budget) if self._index else None
        if not live:
            if len(norm) <= prefilter.MAX_CACHED_TEXT:
                return _generic(norm, days)
            return _scrub(norm, days, budget=budget)
        found = sorted((self._rules[i] for i in sorted(live) if i >= 0), key=_rule_order)
        return _scrub(norm, days, tuple(dict.fromkeys(found)), self._surnames, self._cjk_names, budget)


def _prepare(text: str) -> tuple[str, str]:
    norm = _SENTINELS.sub("", phi.normalise_text(text))
    return norm, prefilter.fold(norm)


_prepared_cached = functools.lru_cache(maxsize=8192)(_prepare)


def _prepared(text: str) -> tuple[str, str]:
    """(NFKC form without sentinels, its fold) of a text; cached for the short ones."""
    return _prepared_cached(text) if len(text) <= prefilter.MAX_CACHED_TEXT else _prepare(text)


@functools.lru_cache(maxsize=8192)
def _generic(norm: str, days: int | None) -> str:
    # The scrub of a text that holds none of a message's known values or surnames does
    # not depend on the message: shared by all, keyed by the text and the shift only.
    return _scrub(norm, days)


def _scrub(
    text: str,
    days: int | None,
    rules: tuple[_Rule, ...] = (),
    surnames: frozenset[str] = _NO_NAMES,
    cjk_names: frozenset[str] = _NO_NAMES,
    budget: Budget | None = None,
) -> str:
    """The scrub of normalised ``text`` (without sentinels) with the ``rules`` that may match
    it and the message's known Chinese surnames and full names; ``passes`` are spent from
    ``budget`` before they run (each pass is linear in the text)."""
    parked = _Parked()

    def passes(count: int) -> None:
        if budget is not None:
            budget.spend(count * len(text))

    def fixed(replacement: str) -> Callable[[re.Match[str]], str]:
        return lambda _match: parked.park(replacement)

    def in_group(replacement: str) -> Callable[[re.Match[str]], str]:
        # Only group "x" is the value; the rest of the match was the cue before it.
        return lambda match: _replace_group(match, "x", parked.park(replacement))

    def shifted(date: LooseDate | None) -> str:
        if date is None or days is None:
            return PLACEHOLDERS["DATE"]
        return date.shifted(days)

    # The unambiguous shapes go first, so a reported MRN found inside a mobile number
    # or resident id does not leave the rest of that number behind.
    passes(8)
    text = _URL.sub(lambda m: _url_repl(m, parked), text)
    text = _EMAIL.sub(fixed(PLACEHOLDERS["EMAIL"]), text)
    text = _IPV6_CANDIDATE.sub(
        lambda m: parked.park(_IP_PLACEHOLDER) if _is_ipv6(m.group()) else m.group(), text
    )
    text = _IPV4.sub(fixed(_IP_PLACEHOLDER), text)
    text = _RESIDENT_ID.sub(fixed(PLACEHOLDERS["ID"]), text)
    text = _SSN.sub(fixed(PLACEHOLDERS["ID"]), text)
    text = _CN_MOBILE.sub(fixed(PLACEHOLDERS["PHONE"]), text)
    text = _replace_spans(text, names.known_surname_names(text, surnames, cjk_names), parked)
    for rule in rules:
        passes(1)
        replacement = shifted(rule.date) if rule.kind == "DATE" else PLACEHOLDERS[rule.kind]
        repl = in_group if rule.in_group else fixed
        text = rule.pattern.get().sub(repl(replacement), text)

    def labelled_id(match: re.Match[str]) -> str:
        if phi.digit_count(match["id"]) < _MIN_LABELLED_ID_DIGITS:
            return match.group()
        return _replace_group(match, "id", parked.park(PLACEHOLDERS["ID"]))

    passes(1 + len(TEXT_DATE_PATTERNS))
    text = _ID_LABEL.sub(labelled_id, text)

    def text_date_repl(match: re.Match[str]) -> str:
        date = text_date(match)
        return match.group() if date is None else parked.park(shifted(date))

    for pattern in TEXT_DATE_PATTERNS:
        text = pattern.sub(text_date_repl, text)

    passes(len(_ADDRESS_PATTERNS) + 1)
    for pattern in _ADDRESS_PATTERNS:
        text = pattern.sub(lambda m: _replace_group(m, "addr", parked.park(PLACEHOLDERS["ADDRESS"])), text)

    # A capitalised word right before a known name is its given name ("daughter Kwame
    # Okonkwo" where only Okonkwo was reported); placeholders are single sentinels.
    def given_before(match: re.Match[str]) -> str:
        placeholder = match.group(2)
        if parked.parts[ord(placeholder) - _SENTINEL_BASE] != PLACEHOLDERS["NAME"]:
            return match.group()
        if match.group(1).casefold() in names.NOT_GIVEN:
            return match.group()
        return parked.park(PLACEHOLDERS["NAME"]) + match.group()[len(match.group(1)) :]

    text = _GIVEN_BEFORE_NAME.sub(given_before, text)

    passes(12)  # the name patterns, English and Chinese
    text = _replace_spans(text, names.find_names(text, surnames), parked)
    passes(2)

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
