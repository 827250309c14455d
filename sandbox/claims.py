"""What a text claims, read the same way from a model's sentence and from a fact's line.

Numbers with comparators and units, dates, times, flag words (high, low, abnormal,
normal, critical) with their negation, and content terms with their polarity (affirmed,
negated, uncertain): English words (light stemming) and Chinese character pairs, since
Chinese has no spaces and a pair is the shortest unit that names something (肺炎, 积液).
Hand-written because no library reads English and Chinese clinical text this way offline
in milliseconds (NegEx-style rules are the published baseline for negation scope).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

__all__ = ["Claims", "FlagClaim", "Quantity", "read_claims"]

Day = tuple[str, str, str]
PartialDay = tuple[str | None, str | None, str | None]


@dataclass(frozen=True)
class Quantity:
    value: str  # normalised decimal: "6.1", "139"
    unit: str | None  # normalised unit: "mmol/l", "10^3/ul"; None when none is written
    comparator: str | None  # "<", "<=", ">", ">="

    def __str__(self) -> str:
        return f"{self.comparator or ''}{self.value}{' ' + self.unit if self.unit else ''}"


@dataclass(frozen=True)
class FlagClaim:
    direction: str  # high, low, abnormal, normal, critical
    negated: bool
    quantities: tuple[Quantity, ...]  # the values of its clause


@dataclass
class Claims:
    text: str
    quantities: list[Quantity] = field(default_factory=list)
    times: set[str] = field(default_factory=set)
    dates: list[Day] = field(default_factory=list)  # fully known days
    date_claims: list[tuple[list[PartialDay], str]] = field(default_factory=list)
    flags: list[FlagClaim] = field(default_factory=list)
    flag_words: set[str] = field(default_factory=set)  # directions said, not negated
    denied_flags: set[str] = field(default_factory=set)  # directions negated ("no abnormality")
    terms: list[str] = field(default_factory=list)  # in order, unique
    # term -> affirmed / negated / uncertain / instruction (said in text that orders the model)
    polarities: dict[str, set[str]] = field(default_factory=dict)

    @property
    def polar_terms(self) -> dict[str, set[str]]:
        return self.polarities


_MONTHS = {
    m: i
    for i, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ],
        start=1,
    )
    for m in names
}
_MONTH = (
    r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sept?(?:ember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_ORD = r"(?:st|nd|rd|th)?"
_DATE_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:T[\d:.]+(?:Z|[+-]\d{2}:?\d{2})?)?(?!\d)"),
        "ymd",
    ),
    (re.compile(r"(?<!\d)(\d{4})\s*年\s*(\d{1,2})\s*月\s*(?:(\d{1,2})\s*[日号])?"), "ymd"),
    (re.compile(r"(?<!\d)(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]"), "md"),
    (re.compile(rf"\b{_MONTH}\.?\s+(\d{{1,2}}){_ORD}(?:,?\s+(\d{{4}}))?\b", re.I), "Mdy"),
    (re.compile(rf"\b(\d{{1,2}}){_ORD}\s+(?:of\s+)?{_MONTH}\.?,?(?:\s+(\d{{4}}))?\b", re.I), "dMy"),
    (re.compile(rf"\b{_MONTH}\.?,?\s+(\d{{4}})\b", re.I), "My"),
    (re.compile(r"(?<![\d.])(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})(?![\d.])"), "amb"),
    (re.compile(r"(?<![\d.])(\d{4})-(\d{2})(?![-\d])"), "ym"),
]
_TIME = re.compile(r"(?<![\d.])(\d{1,2}):(\d{2})(?::\d{2})?(?![\d])")
_CMP = {
    "<=": "<=", "=<": "<=", "≤": "<=", "at most": "<=", "不超过": "<=", "小于等于": "<=",
    ">=": ">=", "=>": ">=", "≥": ">=", "at least": ">=", "大于等于": ">=",
    "<": "<", "less than": "<", "under": "<", "below": "<", "小于": "<", "低于": "<", "不足": "<",
    ">": ">", "greater than": ">", "more than": ">", "over": ">", "above": ">",
    "大于": ">", "高于": ">", "超过": ">",
}  # fmt: skip
_CMP_RX = "|".join(sorted((re.escape(k) for k in _CMP), key=len, reverse=True))
_QUANTITY = re.compile(
    rf"(?:(?P<cmp>{_CMP_RX})\s*)?(?<![A-Za-z0-9_.])(?P<num>\d+(?:\.\d+)?)(?![\d])"
    r"(?:\s*(?:-|–|~|to|至|到)\s*(?P<num2>\d+(?:\.\d+)?)(?![\d]))?"
    r"(?P<unit>\s*[A-Za-zμµ%°℃‰/*^×\[][A-Za-z0-9μµ%°℃‰/*^×.\[\]{}]*)?",
    re.I,
)


def _words(text: str) -> list[str]:
    return text.split()


_UNITS = frozenset(
    _words(
        "mmhg mg g kg ug ng pg mcg l ml dl ul fl mm cm m mmol umol nmol pmol mol meq iu u miu kiu bpm kpa pa "
        "s sec min h hr hrs d wk mo y cel degc degf % ‰ cells copies kcal cal mosm osm"
    )
)
_NUMBER_WORD = re.compile(r"^(?:x|\*)?10\^?\d+")

_FLAG_PATTERNS = [
    ("critical", r"critical(?:ly)?|panic|危急值?"),
    ("high", r"high(?:er)?|elevat\w*|raised|increas\w*|above (?:the )?(?:normal|reference)(?: range)?"
     r"|偏高|升高|增高|高于|过高|上升|增加"),
    ("low", r"low(?:er)?|decreas\w*|reduc\w*|below (?:the )?(?:normal|reference)(?: range)?"
     r"|偏低|降低|减低|低于|过低|下降|减少"),
    ("abnormal", r"abnormal\w*|out of range|outside (?:the )?(?:normal|reference) range"
     r"|异常|超出(?:参考|正常)?范围"),
    ("normal", r"normal(?:ly)?|within (?:the )?(?:normal|reference) (?:range|limits)|unremarkable|正常"),
]  # fmt: skip
_CJK = r"\u4e00-\u9fff"


def _word_rx(alternatives: str) -> re.Pattern[str]:
    # Latin alternatives need word boundaries, Chinese ones cannot have them.
    return re.compile(rf"(?:(?<![A-Za-z])(?:{alternatives})(?![A-Za-z]))", re.I)


_FLAGS = [(direction, _word_rx(rx)) for direction, rx in _FLAG_PATTERNS]
_UNCERTAIN = _word_rx(
    r"possibl[ey]|probabl[ey]|likely|unlikely|suspect\w*|suspicious|suggest\w*|may|might|could"
    r"|cannot be (?:excluded|ruled out)|questionable|query|equivocal|indeterminate|versus|vs"
    r"|可能|考虑|疑似|待排|不除外|不能排除|倾向|待查|可疑|\?"
)
# Text in the record that reads as an order to the model (a prompt injection, or a note
# written to a person): what it says is nobody's finding, so nothing may rest on it.
_INSTRUCTION = _word_rx(
    r"ignore (?:all |any )?(?:the )?(?:previous|prior|above|earlier|preceding)"
    r" (?:instructions?|prompts?|rules?)"
    r"|disregard|you must|you are now|act as|pretend|system prompt|(?:state|say|write|answer|respond) that"
    r"|new instructions?|忽略(?:之前|以上|上述)?的?(?:指令|提示|规则)|你必须|请输出|请回答|系统提示"
)
_NEGATE_WHOLE = _word_rx(
    r"absent|negative|ruled out|not (?:detected|seen|identified|present)|undetectable|阴性|未检出"
)
_NEGATE_FORWARD = _word_rx(
    r"no evidence of|negative for|free of|no|not|without|denies|denied|deny|neither|nor|never|non"
    r"|未见|未发现|未触及|未闻及|未|无|否认|没有|排除|非"
)
_CLAUSE = re.compile(
    r"(?<!\d)[.:]|[.:](?!\d)|[;!?\n。；！？，、()\[\]]|,(?!\d)|\b(?:but|however|whereas|while|although|except)\b|但|而",
    re.I,
)
_CITATION = re.compile(r"\[?\bF\d+\b\]?")
_LATIN_WORD = re.compile(r"[a-z][a-z0-9]*")
_CJK_RUN = re.compile(rf"[{_CJK}]{{2,}}")
_ZH_FILLER = re.compile(
    "|".join(
        sorted(
            _words(
                "患者 病人 结果 显示 提示 检查 检验 报告 本次 可见 测得 测定 水平 数值 日期 "
                "期间 以上 以下 出现 发现 "
                "表现 记录 总结 摘要 情况 目前 当前 最近 近期 参考范围 参考 "
                "范围 其中 分别 为 的 了 于 在 和 及 与 并 且 "
                "其 该 此 见 有 是 均 也 都 已 呈 值 例 项 中 内 较 等 示 位 名 "
                "岁 性 约 达 次 时 后 前 至 从 自 之 所 将 被 "
                "对 但 又 再 仍 尚 所示 表明 说明 指出 一项 一次 项目"
            ),
            key=len,
            reverse=True,
        )
    )
)
_EN_FILLER = frozenset(
    _words(
        """a an the and or of in on at to for from by as with within into onto over under than then this that
    these those it its is are was were be been being am has have had having do does did done will would
    shall should can there their they them he she his her him we our you your who whom whose which what
    when where how also both each all any some other others another further overall only just very more
    most less least such same so thus therefore hence per via up out off about after before during since
    until while upon among between across against toward towards patient patients person summary summaries
    result results level levels value values test tests testing measured measurement measurements measure
    reported report reports reporting noted note notes found finding findings shown shows show showed
    showing reveal reveals revealed revealing demonstrate demonstrates demonstrated indicate indicates
    indicated indicating record recorded records recording document documented see seen observed
    observation observations remain remains remained date dated day days time times today recent recently
    latest current currently previous previously prior latter former respectively including include
    includes included include one two three first second third well overall noted given which whereas
    here herein item items sample samples specimen specimens laboratory lab labs panel panels status
    reading readings obtained performed done available category categories mild moderate marked
    significant significantly slightly slight result's year years old aged age born"""
    )
)
_STEM_SUFFIXES = ("ations", "ation", "ities", "ity", "ings", "ing", "ies", "ied", "es", "ed", "ly", "s")


def _stem(word: str) -> str:
    for suffix in _STEM_SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)] + ("y" if suffix in ("ies", "ied") else "")
    return word


def _number(text: str) -> str | None:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return format(value.normalize(), "f")


def _unit(raw: str | None) -> str | None:
    if not raw:
        return None
    unit = raw.strip().rstrip(".").lower().replace("µ", "u").replace("μ", "u").replace("×", "x")
    unit = unit.replace(" ", "").replace("10*", "10^")
    unit = re.sub(r"^x(?=10)", "", unit).replace("mcg", "ug").replace("℃", "cel").replace("°c", "cel")
    if not unit:
        return None
    if unit in _UNITS or "/" in unit or "%" in unit or "^" in unit or _NUMBER_WORD.match(unit):
        return unit
    return None


def _blank(text: str, start: int, end: int) -> str:
    return text[:start] + " " * (end - start) + text[end:]


def _read_dates(text: str, claims: Claims) -> str:
    for pattern, shape in _DATE_PATTERNS:
        for match in pattern.finditer(text):
            groups = match.groups()
            alternatives: list[PartialDay] = []
            if shape == "ymd":
                alternatives.append((groups[0], groups[1], groups[2]))
            elif shape == "ym":
                alternatives.append((groups[0], groups[1], None))
            elif shape == "md":
                alternatives.append((None, groups[0], groups[1]))
            elif shape == "Mdy":
                alternatives.append((groups[2], str(_MONTHS[groups[0].lower()]), groups[1]))
            elif shape == "dMy":
                alternatives.append((groups[2], str(_MONTHS[groups[1].lower()]), groups[0]))
            elif shape == "My":
                alternatives.append((groups[1], str(_MONTHS[groups[0].lower()]), None))
            else:  # 03/04/2026: month first or day first, either may be meant
                alternatives.append((groups[2], groups[0], groups[1]))
                alternatives.append((groups[2], groups[1], groups[0]))
            normal = [(y, m.zfill(2) if m else None, d.zfill(2) if d else None) for y, m, d in alternatives]
            claims.date_claims.append((normal, match.group(0).strip()))
            claims.dates.extend((y, m, d) for y, m, d in normal if y and m and d)
            text = _blank(text, match.start(), match.end())
    for match in _TIME.finditer(text):
        claims.times.add(f"{int(match.group(1)):02d}:{match.group(2)}")
        text = _blank(text, match.start(), match.end())
    return text


def _clauses(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in _CLAUSE.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def _scope(clause: str) -> list[tuple[int, str]]:
    """Where in the clause the polarity changes: (offset, polarity) in order. Uncertainty
    covers the whole clause; "no X" negates what follows; "X negative" the whole clause."""
    if _INSTRUCTION.search(clause):
        return [(0, "instruction")]
    if _UNCERTAIN.search(clause):
        return [(0, "uncertain")]
    if _NEGATE_WHOLE.search(clause):
        return [(0, "negated")]
    first = _NEGATE_FORWARD.search(clause)
    if first:
        return [(0, "affirmed"), (first.end(), "negated")]
    return [(0, "affirmed")]


def _polarity_at(scope: list[tuple[int, str]], offset: int) -> str:
    polarity = scope[0][1]
    for start, value in scope:
        if offset >= start:
            polarity = value
    return polarity


def _add_term(claims: Claims, term: str, polarity: str) -> None:
    if term not in claims.polarities:
        claims.terms.append(term)
        claims.polarities[term] = set()
    claims.polarities[term].add(polarity)


def _read_clause(clause: str, claims: Claims) -> None:
    quantities: list[Quantity] = []
    for match in _QUANTITY.finditer(clause):
        unit = _unit(match.group("unit"))
        cmp_word = (match.group("cmp") or "").lower()
        comparator = _CMP.get(cmp_word) if cmp_word else None
        for raw in (match.group("num"), match.group("num2")):
            value = _number(raw) if raw else None
            if value is not None:
                quantities.append(Quantity(value, unit, comparator if raw == match.group("num") else None))
        end = match.end() if unit else match.end("num2") if match.group("num2") else match.end("num")
        clause = _blank(clause, match.start(), end)
    claims.quantities.extend(quantities)
    scope = _scope(clause)
    for direction, pattern in _FLAGS:
        for match in pattern.finditer(clause):
            negated = _polarity_at(scope, match.start()) == "negated"
            claims.flags.append(FlagClaim(direction, negated, tuple(quantities)))
            (claims.denied_flags if negated else claims.flag_words).add(direction)
            clause = _blank(clause, match.start(), match.end())
    for pattern in (_UNCERTAIN, _NEGATE_WHOLE, _NEGATE_FORWARD):
        for match in pattern.finditer(clause):
            clause = _blank(clause, match.start(), match.end())
    lowered = clause.lower()
    for match in _LATIN_WORD.finditer(lowered):
        word = match.group(0)
        if len(word) < 2 or word in _EN_FILLER:
            continue
        _add_term(claims, _stem(word), _polarity_at(scope, match.start()))
    cjk = _ZH_FILLER.sub(lambda m: " " * len(m.group(0)), clause)
    for run in _CJK_RUN.finditer(cjk):
        text = run.group(0)
        for i in range(len(text) - 1):
            _add_term(claims, text[i : i + 2], _polarity_at(scope, run.start() + i))


def read_claims(text: str) -> Claims:
    claims = Claims(text)
    normal = unicodedata.normalize("NFKC", text).replace("µ", "u")
    normal = _CITATION.sub(" ", normal)
    normal = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", normal)  # 1,000 -> 1000
    normal = _read_dates(normal, claims)
    for start, end in _clauses(normal):
        _read_clause(normal[start:end], claims)
    return claims
