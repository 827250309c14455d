"""Names the message did not report: dictionaries plus context, in English and Chinese.

Known values (``phi``) catch the names the message carries in structured fields. This
module finds the others: a consultant named only in a report, a relative in a nursing
note. A dictionary word alone is never enough: "Will", "Grace", "王" and "高" are words
too. A span is taken as a name when

* English: a title precedes it ("Dr.", "Mrs.", "Nurse"; any capitalised word then), a
  context phrase precedes it ("seen by", "patient", "wife") and the list knows one of its
  words, a credential follows it ("J. Doe, MD"), or it is a given name from the list
  followed by a surname from the list ("Mary Johnson");
* Chinese: a surname from the 百家姓 list (compound ones such as 欧阳 first) follows a cue
  (患者, 姓名:, 家属, 医师:), precedes a title (先生, 女士, 医生, 主任, 之子) or is followed
  by 某/某某.

Clinical words are protected: English eponyms ("Parkinson disease", "Down syndrome",
"Hodgkin lymphoma") are kept unless a title makes them a person, and Chinese spans that
overlap a protected term (右肺上叶, 叶间裂, 王氏综合征, 高血压, 白细胞, 黄疸, 主管医生 ...)
are never names. A weak Chinese cue also needs given-name characters from a list.

``find_names`` returns spans; the scrubber replaces them. Everything here is linear in
the text length: cues are found by regular expressions without nested repetition and
each candidate looks at a bounded window.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

_DATA = Path(__file__).resolve().parent / "data"


def _load(name: str) -> tuple[str, ...]:
    lines = (_DATA / name).read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def _words(name: str) -> list[str]:
    """A whitespace-separated word list of ``deid/data`` (comment lines left out)."""
    return [w for line in _load(name) for w in line.split()]


@cache
def english_given() -> frozenset[str]:
    return frozenset(n.casefold() for n in _load("en_given.txt"))


@cache
def english_surnames() -> frozenset[str]:
    return frozenset(n.casefold() for n in _load("en_surnames.txt"))


@cache
def chinese_surnames() -> tuple[frozenset[str], frozenset[str]]:
    """(compound surnames, single-character surnames)."""
    names = _load("zh_surnames.txt")
    return frozenset(n for n in names if len(n) == 2), frozenset(n for n in names if len(n) == 1)


@cache
def chinese_given_chars() -> frozenset[str]:
    return frozenset("".join(_load("zh_given_chars.txt")))


# ---------------------------------------------------------------- English

# Case-sensitive: "MS" is multiple sclerosis, "MR" a modality.
_TITLE = r"(?:Dr|Drs|Mr|Mrs|Ms|Mx|Miss|Mme|Prof|Professor|Doctor|Nurse|Sister|Rev|Sr|Hr|Fr)"
_CAP_WORD = r"(?:(?:Mc|Mac|O'|D')?[A-Z][a-z]+(?:['\-][A-Z]?[a-z]+)?|[A-Z]\.?)"
# Up to three capitalised words (or initials) in a row: "John", "J. Smith", "Mary-Ann O'Neil".
_CAP_RUN = rf"{_CAP_WORD}(?:[ \t]+{_CAP_WORD}){{0,2}}"
_EN_TITLE = re.compile(rf"(?<![A-Za-z])(?=[A-Z])(?:{_TITLE}\.?[ \t]+)+(?P<name>{_CAP_RUN})")
# Phrases after which a capitalised word from the name lists is a person. Strong ones
# ("signed by", "name:") take any capitalised run.
_EN_STRONG_CUES = (
    r"signed by|electronically signed by|dictated by|transcribed by|reviewed by|verified by|"
    r"read by|reported by|seen by|examined by|approved by|authenticated by"
)
# Labels: any capitalised run after them, but only with a colon ("Name: ...").
_EN_LABELS = (
    r"name|patient name|pt name|patient|next of kin|nok|emergency contact|contact person|contact|"
    r"referring physician|attending physician|ordering physician|attending|referring|"
    r"radiologist|pathologist|surgeon|physician|provider|technologist|tech|author|signature|"
    r"spouse|wife|husband|son|daughter|mother|father|guardian|informant|relative|nurse|rn|md|cc|attn|to|from"
)
_EN_WEAK_CUES = (
    r"spouse|wife|husband|son|daughter|mother|father|brother|sister|guardian|partner|"
    r"niece|nephew|grandson|granddaughter|aunt|uncle|caregiver|friend|"
    r"patient|pt|called|informed|discussed with|spoke with|spoke to|met with|"
    r"accompanied by|visited by|brought in by|contact|with|per|by|and|to|from|rn|nurse"
)
_EN_CUE = re.compile(
    # (?=[A-Za-z]) first: a position that cannot start a cue fails before the alternation.
    # The blanks are possessive: a name cannot start with one, and giving some back made a
    # cue followed by a long run of blanks cost the square of the run.
    rf"(?<![A-Za-z])(?=[A-Za-z])(?:(?i:(?P<label>{_EN_LABELS}))[ \t]*+:"
    rf"|(?i:(?P<strong>{_EN_STRONG_CUES})|(?P<weak>{_EN_WEAK_CUES}))[ \t]*+(?:[:,]|\(s\)|is|was)?)"
    rf"[ \t]*+(?P<name>{_CAP_RUN})"
)
_EN_CREDENTIAL = re.compile(
    rf"(?<![A-Za-z])(?=[A-Z])(?P<name>{_CAP_RUN}),?[ \t]+"
    r"(?:MD|M\.D\.|DO|RN|NP|PA-C|PA|PhD|MBBS|FRCR|FRCP|DDS|CNP|LPN)(?![A-Za-z])"
)
_EN_BIGRAM = re.compile(
    rf"(?<![A-Za-z'])(?=[A-Z])(?P<name>{_CAP_WORD}(?:[ \t]+[A-Z]\.?)?"
    r"[ \t]+(?:Mc|Mac|O'|D')?[A-Z][a-z]+(?:-[A-Z][a-z]+)?)(?![A-Za-z])"
)
_EN_SURNAME_FIRST = re.compile(r"(?<![A-Za-z])(?P<name>[A-Z][a-z]+,[ \t]*[A-Z][a-z]+)(?![A-Za-z])")

# Eponyms: a person's name that names a disease, sign or device. Kept unless a title
# makes it a person ("Dr. Parkinson").
_EPONYMS = frozenset(w.casefold() for w in _words("en_eponyms.txt"))
_EPONYM_HEADS = re.compile(
    r"^(?:'s|’s)?\s*(?:disease|syndrome|sign|signs|test|lymphoma|sarcoma|palsy|procedure|fracture|"
    r"classification|score|scale|criteria|maneuver|manoeuvre|reflex|phenomenon|tube|catheter|"
    r"operation|repair|law|triad|tumou?r|cyst|node|nodes|ulcer|esophagus|oesophagus|disorder|"
    r"anomaly|malformation|cell|cells|body|bodies|stain|staining|monitor|probe|grade|grading|"
    r"stage|staging|type|index|method|technique|position|line|lines|murmur|spots|nodule|nodules|"
    r"neuroma|contracture|encephalopathy|thyroiditis|block|rule|formula|sonography|ultrasound)\b",
    re.IGNORECASE,
)
# Capitalised words that follow cues but are not names.
_EN_STOP = frozenset(w.casefold() for w in _words("en_stop_words.txt"))

# Capitalised words that may stand right before a name without being its given name.
NOT_GIVEN = _EN_STOP | frozenset(w.casefold() for w in _words("en_not_given.txt")) | _EPONYMS


def _en_tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[ \t]+", name) if t]


def _is_initial(token: str) -> bool:
    return re.fullmatch(r"[A-Z]\.?", token) is not None


def _in_lists(token: str) -> bool:
    folded = token.casefold().strip(".")
    return folded in english_given() or folded in english_surnames()


def _trim_en(name: str, start: int) -> tuple[int, int] | None:
    """The span of the leading name-like tokens of ``name`` (at ``start``), stop words cut off."""
    kept: list[re.Match[str]] = []
    for token in re.finditer(r"[^ \t]+", name):
        word = token.group()
        if word.casefold().strip(".") in _EN_STOP and not _in_lists(word):
            break
        kept.append(token)
    # A trailing lone initial belongs to the next sentence more often than to the name.
    while len(kept) > 1 and _is_initial(kept[-1].group()) and not kept[-1].group().endswith("."):
        kept.pop()
    if not kept or all(_is_initial(t.group()) for t in kept):
        return None
    return start, start + kept[-1].end()


def _eponym(text: str, start: int, end: int, name: str) -> bool:
    tokens = [t.casefold().strip(".") for t in _en_tokens(name)]
    if _EPONYM_HEADS.match(text[end : end + 40]):
        return True
    # "Wolff-Parkinson-White", "Guillain-Barre": every part an eponym.
    parts = [p for t in tokens for p in t.split("-") if p]
    return bool(parts) and all(p in _EPONYMS for p in parts) and len(parts) > 1 and "-" in name


def _english(text: str) -> Iterator[tuple[int, int]]:
    for m in _EN_TITLE.finditer(text):
        span = _trim_en(m["name"], m.start("name"))
        if span is not None:
            yield span
    for m in _EN_CUE.finditer(text):
        span = _trim_en(m["name"], m.start("name"))
        if span is None:
            continue
        name = text[span[0] : span[1]]
        tokens = [t for t in _en_tokens(name) if not _is_initial(t)]
        known = any(_in_lists(t) for t in tokens)
        if m["weak"] is not None and not known:
            continue
        if (
            m["weak"] is not None
            and len(tokens) == 1
            and m["weak"].casefold() in {"with", "and", "to", "from", "by", "per"}
        ):
            # "with Wilson", "to Jordan": too common to trust on one word.
            continue
        if _eponym(text, *span, name) or (
            len(tokens) == 1
            and tokens[0].casefold() in _EPONYMS
            and _EPONYM_HEADS.match(text[span[1] : span[1] + 40])
        ):
            continue
        yield span
    for m in _EN_CREDENTIAL.finditer(text):
        span = _trim_en(m["name"], m.start("name"))
        if span is not None:
            yield span
    for m in _EN_BIGRAM.finditer(text):
        tokens = _en_tokens(m["name"])
        first, last = tokens[0], tokens[-1]
        if first.casefold() in english_given() and last.casefold() in english_surnames():
            if first.casefold() in _EN_STOP or last.casefold() in _EN_STOP:
                continue
            if _EPONYM_HEADS.match(text[m.end() : m.end() + 40]) or _eponym(
                text, m.start(), m.end(), m["name"]
            ):
                continue
            yield m.start("name"), m.end("name")
    for m in _EN_SURNAME_FIRST.finditer(text):
        family, given = (p.strip() for p in m["name"].split(","))
        listed = family.casefold() in english_surnames() and given.casefold() in english_given()
        if listed and family.casefold() not in _EN_STOP and given.casefold() not in _EN_STOP:
            yield m.start("name"), m.end("name")


# ---------------------------------------------------------------- Chinese

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff"
# Cues after which, with a colon, the next two to four characters are a name.
_ZH_STRONG = (
    r"姓名|患者姓名|病人姓名|家属姓名|家属|联系人|紧急联系人|监护人|陪同人|代理人|委托人|签名|签字|"
    r"医师|医生|护士|报告医师|审核医师|报告者|审核者|报告人|审核人|记录人|记录者|书写者|书写人|"
    r"检查医师|诊断医师|申请医师|送检医师|主治医师|住院医师|主任医师|经治医师|主管医师|管床医师|"
    r"主刀|术者|助手|麻醉医师|技师|操作者|操作员|录入|开单医生|申请医生|送检医生|报告医生|审核医生|"
    r"主治医生|住院医生|主管医生|经治医生|管床医生|值班医生|责任护士|主管护士|护士长|配偶|丈夫|"
    r"妻子|儿子|女儿|父亲|母亲|哥哥|姐姐|弟弟|妹妹|孙子|孙女|患者|病人|病患|患儿|先生|女士"
)
_ZH_STRONG_CUE = re.compile(rf"(?:{_ZH_STRONG})[ \t]*[:：][ \t]*(?=[{_CJK}])")
# Cues that need the name to look like a name (given-name characters, a boundary after it).
_ZH_WEAK = (
    r"患者|病人|病患|患儿|家属|其子|其女|其夫|其妻|之子|之女|丈夫|妻子|儿子|女儿|父亲|母亲|配偶|"
    r"联系人|陪同|医师|医生|护士|主任|告知|通知|电话告知|已告知|交代|签字人|姓名|由|经|请"
)
_ZH_WEAK_CUE = re.compile(rf"(?:{_ZH_WEAK})(?=[{_CJK}])")
# Titles and kinship words that follow a name.
_ZH_AFTER = (
    r"副主任医师|主任医师|主治医师|住院医师|主治医生|主管医生|主管医师|经治医师|副教授|"
    r"先生|女士|小姐|同志|医生|医师|大夫|护士长|护士|主任|教授|老师|院长|科长|之子|之女|之妻|之夫|之父|之母|"
    r"家属|患者|阿姨|师傅|老人|太太|夫人"
)
_ZH_AFTER_RE = re.compile(rf"(?:{_ZH_AFTER})")
# Titles that follow a bare surname ("王先生", "李主任"); kinship words need a full name.
_ZH_HONORIFICS = frozenset(
    [
        "先生",
        "女士",
        "小姐",
        "同志",
        "医生",
        "医师",
        "大夫",
        "护士长",
        "护士",
        "主任",
        "教授",
        "老师",
        "院长",
        "科长",
        "阿姨",
        "师傅",
        "太太",
        "夫人",
        "副主任医师",
        "主任医师",
        "主治医师",
        "副教授",
    ]
)
# What a person does in a note, right after the name.
_ZH_RIGHT = re.compile(
    r"查房|接诊|会诊|签字|签名|告知|诊治|手术|主刀|陪同|代诉|同意|知情|表示|诉|说|称|负责|审核|报告"
)
_ZH_MOU = re.compile(r"某某?(?![日时地院处年月天种些项次个])")
# Characters that end a name: grammar and clinical words that follow a name in notes.
_ZH_STOP_CHARS = frozenset(
    "的了是在于因以自从由和与及或等为被把向对到来去今昨前后入出住转诉述称感有无未已再陪签告代"
    "男女岁年月日时分号周次个位名例侧肺肝肾脑胃肠科院室部叶段部区处性型级期度病症炎癌瘤痛热咳喘血尿便"
    "检查治疗术诊断见示呈约伴及左右上下内外双单"
)
# Never part of a name: clinical terms (many start with a surname character) and staff titles.
_ZH_PROTECTED = _load("zh_protected_terms.txt")
_ZH_SURNAMES = chinese_surnames()
_ZH_PROTECTED_RE = re.compile("|".join(sorted(map(re.escape, _ZH_PROTECTED), key=len, reverse=True)))


def _surname_at(text: str, i: int) -> int:
    """Length of the surname starting at ``i`` (2 for a compound, 1, or 0 for none)."""
    compound, single = _ZH_SURNAMES
    if text[i : i + 2] in compound:
        return 2
    return 1 if text[i : i + 1] in single else 0


_CJK_RE = re.compile(f"[{_CJK}]")


def _is_cjk(char: str) -> bool:
    return "\u3400" <= char <= "\u4dbf" or "\u4e00" <= char <= "\u9fff"


def _given_length(text: str, i: int, *, strict: bool, limit: int = 2) -> int:
    """How many of the characters at ``i`` read as a given name (0 to ``limit``)."""
    given = chinese_given_chars()
    n = 0
    while n < limit and i + n < len(text):
        char = text[i + n]
        if not _is_cjk(char) or char in _ZH_STOP_CHARS:
            break
        if strict and char not in given:
            break
        n += 1
    return n


class _Protected:
    """The protected terms of a text, in order and not overlapping (as ``finditer`` finds
    them), so whether a span overlaps one is a binary search, not a scan of them all."""

    __slots__ = ("ends", "starts")

    def __init__(self, text: str) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        for m in _ZH_PROTECTED_RE.finditer(text):
            self.starts.append(m.start())
            self.ends.append(m.end())

    def overlaps(self, span: tuple[int, int]) -> bool:
        # The first term ending after the span starts is the only one that can overlap it.
        i = bisect.bisect_right(self.ends, span[0])
        return i < len(self.starts) and self.starts[i] < span[1]


def _before_title(text: str, end: int, known: frozenset[str], *, bare: bool) -> tuple[int, int] | None:
    """The name before a title ending at ``end``; a surname alone only if ``bare`` (王先生)."""
    # Surname length at each possible start, looked up once: (total length, surname length).
    starts = [(total, _surname_at(text, end - total)) for total in (4, 3, 2, 1) if end - total >= 0]
    starts = [(total, sur) for total, sur in starts if sur and 0 <= total - sur <= 2]
    if not starts:
        return None
    for strict in (True, False):
        for total, sur in starts:
            given, start = total - sur, end - total
            if given == 0 and not bare:
                continue
            if given and _given_length(text, start + sur, strict=strict, limit=given) < given:
                continue
            if not strict and text[start : start + sur] not in known and given == 0:
                continue
            return start, end
    return None


def _chinese(text: str, known: frozenset[str]) -> Iterator[tuple[int, int]]:
    if not _CJK_RE.search(text):
        return
    # Strong cue with a colon: a surname from the list and up to two given characters, or
    # (no listed surname) two or three characters that are not grammar.
    for m in _ZH_STRONG_CUE.finditer(text):
        i = m.end()
        sur = _surname_at(text, i)
        if sur:
            given = _given_length(text, i + sur, strict=False)
            if given:
                yield i, i + sur + given
                continue
        length = _given_length(text, i, strict=False, limit=3)
        if length >= 2:
            yield i, i + length
    # Weak cue: a listed surname followed by given-name characters and a boundary.
    for m in _ZH_WEAK_CUE.finditer(text):
        i = m.end()
        sur = _surname_at(text, i)
        if not sur:
            continue
        # A surname the message reports (the patient's family) needs no listed given name,
        # nor does a compound surname (欧阳, 慕容 are no clinical words).
        strict = sur == 1 and text[i : i + sur] not in known
        given = _given_length(text, i + sur, strict=strict)
        if strict and not given:
            # Context on both sides ("上级医师徐翀查房") is enough for any given name.
            loose = _given_length(text, i + sur, strict=False)
            for n in range(loose, 0, -1):
                if _ZH_RIGHT.match(text, i + sur + n):
                    given = n
                    break
        if given:
            yield i, i + sur + given
    # A title after the name: look back for surname (+ given) before it. Given-name
    # characters from the list are preferred (so "和李明主任" is 李明, not 和李明).
    for m in _ZH_AFTER_RE.finditer(text):
        found = _before_title(text, m.start(), known, bare=m.group() in _ZH_HONORIFICS)
        if found:
            yield found
    for m in _ZH_MOU.finditer(text):
        end = m.start()
        for sur in (2, 1):
            start = end - sur
            if start >= 0 and _surname_at(text, start) == sur:
                yield start, m.end()
                break


def known_surname_names(
    text: str, known: frozenset[str], full_names: frozenset[str] = frozenset()
) -> list[tuple[int, int]]:
    """Names built on a surname the message reports: "其子欧阳浩然" where only the patient
    欧阳建国 was reported. A cue before the surname lets any given name through; without
    one, the given name must be made of listed given-name characters."""
    if not known or not _CJK_RE.search(text):
        return []
    pattern = re.compile("|".join(sorted(map(re.escape, known), key=len, reverse=True)))
    cue_ends = {m.end() for m in _ZH_WEAK_CUE.finditer(text)} | {
        m.end() for m in _ZH_STRONG_CUE.finditer(text)
    }
    protected = _Protected(text)
    # A full name is looked up by the text at each of their lengths, not each compared.
    lengths = sorted({len(name) for name in full_names})
    spans = []
    for m in pattern.finditer(text):
        start, end = m.span()
        if any(n > end - start and text[start : start + n] in full_names for n in lengths):
            continue  # a reported full name: the known-value pass takes exactly it
        given = _given_length(text, end, strict=start not in cue_ends)
        span = (start, end + given)
        if given and not protected.overlaps(span):
            spans.append(span)
    return spans


def find_names(text: str, known_surnames: frozenset[str] = frozenset()) -> list[tuple[int, int]]:
    """Non-overlapping (start, end) spans of names in ``text``, in order.

    ``known_surnames`` are Chinese surnames of people the message names; after a cue they
    need no given-name characters from the list.
    """
    spans = list(_english(text))
    zh = list(_chinese(text, known_surnames))
    if zh:
        protected = _Protected(text)
        spans += [s for s in zh if not protected.overlaps(s)]
    merged: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
