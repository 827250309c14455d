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

__all__ = ["Claims", "FlagClaim", "Quantity", "read_claims", "uncovered"]

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
    cjk_runs: list[str] = field(default_factory=list)  # Chinese stretches left after filler words
    normal: str = ""  # the text as read (NFKC, citations removed)
    # term -> affirmed / negated / uncertain / instruction (said in text that orders the model)
    polarities: dict[str, set[str]] = field(default_factory=dict)


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
    r"(?P<unit>\s*(?:(?:[x×*]\s*)?10\s*[\^*]\s*\d+(?:\s*/\s*[A-Za-zμµ]+)?"
    r"|[A-Za-zμµ%°℃‰/\[\ufffd][A-Za-z0-9μµ%°℃‰/*^×.\[\]{}_\ufffd]*))?",
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
# Units spelled out, or in IEEE 11073 MDC_DIM_* form, as some feeds send them.
_UNIT_WORDS = {
    "kilogram": "kg", "kilograms": "kg", "gram": "g", "grams": "g", "milligram": "mg", "milligrams": "mg",
    "microgram": "ug", "micrograms": "ug", "liter": "l", "litre": "l", "liters": "l", "litres": "l",
    "milliliter": "ml", "millilitre": "ml", "milliliters": "ml", "percent": "%", "mm[hg]": "mmhg",
    "centimeter": "cm", "centimetre": "cm", "centimeters": "cm", "millimeter": "mm", "millimetre": "mm",
    "kilo_g": "kg", "beat_per_min": "/min", "beats/min": "/min", "bpm": "/min", "degc": "cel", "cel": "cel",
    "breath_per_min": "/min", "/min": "/min", "min-1": "/min", "deg_c": "cel", "centi_m": "cm",
}  # fmt: skip

_FLAG_PATTERNS = [
    ("critical", r"critical(?:ly)?|panic", r"危急值?"),
    ("high", r"high(?:er)?|elevat\w*|raised|increas\w*|above (?:the )?(?:normal|reference)(?: range)?",
     r"偏高|升高|增高|高于|过高|上升|增加"),
    ("low", r"low(?:er)?|decreas\w*|reduc\w*|below (?:the )?(?:normal|reference)(?: range)?",
     r"偏低|降低|减低|低于|过低|下降|减少"),
    ("abnormal", r"abnormal\w*|out of range|outside (?:the )?(?:normal|reference) range",
     r"异常|超出(?:参考|正常)?范围"),
    ("normal", r"normal(?:ly)?|within (?:the )?(?:normal|reference) (?:range|limits)|unremarkable", r"正常"),
]  # fmt: skip
_CJK = r"\u4e00-\u9fff"


def _word_rx(latin: str, chinese: str = "") -> re.Pattern[str]:
    # Latin words need word boundaries; Chinese ones have none (and often follow a Latin
    # letter: "CT未见", "ALT偏高").
    rx = rf"(?<![A-Za-z])(?:{latin})(?![A-Za-z])"
    return re.compile(rx + (f"|(?:{chinese})" if chinese else ""), re.I)


_FLAGS = [(direction, _word_rx(latin, chinese)) for direction, latin, chinese in _FLAG_PATTERNS]
_UNCERTAIN = _word_rx(
    r"possibl[ey]|probabl[ey]|likely|unlikely|suspect\w*|suspicious|suggest\w*|may|might|could"
    r"|cannot be (?:excluded|ruled out)|questionable|query|equivocal|indeterminate|versus|vs",
    r"可能|考虑|疑似|待排|不除外|不能排除|倾向|待查|可疑|\?",
)
# Text in the record that reads as an order to the model (a prompt injection, or a note
# written to a person): what it says is nobody's finding, so nothing may rest on it.
_INSTRUCTION = _word_rx(
    r"ignore (?:all |any )?(?:the )?(?:previous|prior|above|earlier|preceding)"
    r" (?:instructions?|prompts?|rules?)"
    r"|disregard|you must|you are now|act as|pretend|system prompt|(?:state|say|write|answer|respond) that"
    r"|new instructions?",
    r"忽略(?:之前|以上|上述)?的?(?:指令|提示|规则)|你必须|请输出|请回答|系统提示",
)
_NEGATE_WHOLE = _word_rx(
    r"absent|negative(?! for)|ruled out|not (?:detected|seen|identified|present)|undetectable", r"阴性|未检出"
)
_NEGATE_FORWARD = _word_rx(
    r"no evidence of|negative for|free of|no|not|without|denies|denied|deny|neither|nor|never|non",
    r"未见|未发现|未触及|未闻及|未|无|否认|没有|排除|非",
)
_CLAUSE = re.compile(
    rf"(?<!\d)\.|\.(?!\d)|[;!?\n。；！？，]|(?<=[{_CJK}]),|,(?=[{_CJK}])"
    r"|\b(?:but|however|whereas|while|although|except)\b|但|而",
    re.I,
)
_CITATION = re.compile(r"\[?\bF\d+\b\]?")
_LATIN_WORD = re.compile(r"[a-z][a-z0-9]*")
_CJK_RUN = re.compile(rf"[{_CJK}]+")
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


def _unit(raw: str | None, *, fact: bool) -> str | None:
    """The unit after a number, normalised; a fact's unrecognised word is kept as ``~word``
    (a sentence must then say the same), a sentence's is ignored (it is seldom a unit)."""
    if not raw:
        return None
    unit = raw.strip().rstrip(".,").lower().replace("µ", "u").replace("μ", "u").replace("×", "x")
    unit = unit.replace(" ", "").replace("10*", "10^")
    unit = re.sub(r"^x(?=10)", "", unit).replace("mcg", "ug").replace("℃", "cel").replace("°c", "cel")
    unit = unit.removeprefix("mdc_dim_")
    unit = _UNIT_WORDS.get(unit, unit)
    if not unit:
        return None
    if unit in _UNITS or "/" in unit or "%" in unit or "^" in unit or _NUMBER_WORD.match(unit):
        return unit
    return f"~{unit}" if fact else None


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
    """Where in the clause the polarity changes: (offset, polarity) in order. An order to
    the model or uncertainty covers the whole clause; "X negative" too; "no X" (and "no
    X, Y or Z") negates what follows it, up to a colon ("CT without contrast: nodule")."""
    if _INSTRUCTION.search(clause):
        return [(0, "instruction")]
    if _UNCERTAIN.search(clause):
        return [(0, "uncertain")]
    if _NEGATE_WHOLE.search(clause):
        return [(0, "negated")]
    return _forward_scope(clause)


def _forward_scope(clause: str) -> list[tuple[int, str]]:
    intervals: list[tuple[int, int]] = []
    for cue in _NEGATE_FORWARD.finditer(clause):
        colon = clause.find(":", cue.end())
        end = colon if colon != -1 else len(clause)
        if intervals and cue.end() <= intervals[-1][1]:
            intervals[-1] = (intervals[-1][0], max(end, intervals[-1][1]))
        else:
            intervals.append((cue.end(), end))
    scope = [(0, "affirmed")]
    for start, end in intervals:
        scope += [(start, "negated"), (end, "affirmed")]
    return scope


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


@dataclass(frozen=True)
class _Placed:
    start: int  # in the whole text
    end: int
    clause: int
    quantity: Quantity


def _nearest(placed: list[_Placed], start: int, end: int, clause: int) -> tuple[Quantity, ...]:
    """The value a flag word speaks of: the nearest in its clause, else the nearest before
    it in the sentence ("血钾6.1 mmol/L，偏高"), else none (then every cited fact counts)."""
    own = [p for p in placed if p.clause == clause]
    if own:
        best = min(own, key=lambda p: start - p.end if p.end <= start else p.start - end)
        return (best.quantity,)
    before = [p for p in placed if p.end <= start]
    return (max(before, key=lambda p: p.end).quantity,) if before else ()


def _read_clause(
    clause: str, offset: int, index: int, claims: Claims, placed: list[_Placed], fact: bool
) -> None:
    for match in _QUANTITY.finditer(clause):
        unit = _unit(match.group("unit"), fact=fact)
        cmp_word = (match.group("cmp") or "").lower()
        comparator = _CMP.get(cmp_word) if cmp_word else None
        # A unit word nobody knows stays a word: both sides then check it as a term.
        known_unit = unit is not None and not unit.startswith("~")
        end = match.end() if known_unit else match.end("num2") if match.group("num2") else match.end("num")
        for raw in (match.group("num"), match.group("num2")):
            value = _number(raw) if raw else None
            if value is not None:
                first = raw == match.group("num")
                q = Quantity(value, unit, comparator if first else None)
                claims.quantities.append(q)
                placed.append(_Placed(offset + match.start(), offset + end, index, q))
        clause = _blank(clause, match.start(), end)
    scope = _scope(clause)
    # "Negative (abnormal)": a whole-clause negation says the result is negative, not that
    # the flag is; only "not elevated", "未见异常" deny a flag.
    flag_scope = _forward_scope(clause)
    for direction, pattern in _FLAGS:
        for match in pattern.finditer(clause):
            negated = _polarity_at(flag_scope, match.start()) == "negated"
            near = _nearest(placed, offset + match.start(), offset + match.end(), index)
            claims.flags.append(FlagClaim(direction, negated, near))
            (claims.denied_flags if negated else claims.flag_words).add(direction)
            clause = _blank(clause, match.start(), match.end())
    for pattern in (_INSTRUCTION, _UNCERTAIN, _NEGATE_WHOLE, _NEGATE_FORWARD):
        for match in pattern.finditer(clause):
            clause = _blank(clause, match.start(), match.end())
    lowered = clause.lower()
    for match in _LATIN_WORD.finditer(lowered):
        word = match.group(0)
        if len(word) < 2 or word in _EN_FILLER:
            continue
        _add_term(claims, _stem(word), _polarity_at(scope, match.start()))
    claims.cjk_runs.extend(run.group(0) for run in _CJK_RUN.finditer(clause))
    cjk = _ZH_FILLER.sub(lambda m: " " * len(m.group(0)), clause)
    for run in _CJK_RUN.finditer(cjk):
        text = run.group(0)
        for i in range(len(text) - 1):
            _add_term(claims, text[i : i + 2], _polarity_at(scope, run.start() + i))


def read_claims(text: str, *, fact: bool = False) -> Claims:
    """``fact``: the text is a fact's line (its unrecognised units are kept, see _unit)."""
    claims = Claims(text)
    # A Chinese comma ends a clause whatever it stands between; NFKC would make it ",".
    normal = unicodedata.normalize("NFKC", text.replace("，", "；")).replace("µ", "u")
    normal = _CITATION.sub(" ", normal)
    normal = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", normal)  # 1,000 -> 1000
    claims.normal = normal
    normal = _read_dates(normal, claims)
    placed: list[_Placed] = []
    for index, (start, end) in enumerate(_clauses(normal)):
        _read_clause(normal[start:end], start, index, claims, placed, fact)
    return claims


def uncovered(run: str, known: str) -> list[str]:
    """The stretches of a Chinese run that no character pair of ``known`` covers, less the
    words that need no fact (患者, 的, 为 ...): what the sentence says that the facts do not
    (肺炎 in 考虑肺炎 against a fact without it). A lone character the facts have passes
    (女 of 女性 against "患者：女")."""
    covered = [False] * len(run)
    for i in range(len(run) - 1):
        if run[i : i + 2] in known:
            covered[i] = covered[i + 1] = True
    stretches, current = [], ""
    for char, ok in zip(run, covered, strict=True):
        if ok:
            stretches.append(current)
            current = ""
        else:
            current += char
    stretches.append(current)
    said = []
    for stretch in stretches:
        rest = _ZH_FILLER.sub("", stretch)
        if rest and not (len(rest) == 1 and rest in known):
            said.append(rest)
    return said
