"""De-identified resources → numbered facts, the only thing a model is shown.

One fact is one element of one resource version (``Observation/x/_history/2`` and, for a
report, ``conclusion``), rendered as one line in the summary's language. The line is what
the verifier checks a sentence against: its numbers with their units, its dates, its flag
and the words of its text. Facts are made the same way in the model zone (for the prompt)
and in the identified zone (to check a stored summary again), from the same versions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "ABNORMAL_FLAGS",
    "Fact",
    "facts_for",
    "number_facts",
    "resource_facts",
    "version_reference",
]

# HL7 v3 ObservationInterpretation codes that mean "not normal" (v2 table 0078 maps to them).
ABNORMAL_FLAGS = frozenset(
    {"H", "HH", "HU", "L", "LL", "LU", "A", "AA", "POS", "DET", "R", "I", "W", ">", "<", "CAR", "IND"}
)
_FLAG_WORDS = {
    "en": {
        "H": "high",
        "HH": "critically high",
        "HU": "significantly high",
        "L": "low",
        "LL": "critically low",
        "LU": "significantly low",
        "A": "abnormal",
        "AA": "critically abnormal",
        "N": "normal",
        "POS": "positive",
        "NEG": "negative",
        "DET": "detected",
        "ND": "not detected",
    },
    "zh": {
        "H": "偏高",
        "HH": "危急值偏高",
        "HU": "显著偏高",
        "L": "偏低",
        "LL": "危急值偏低",
        "LU": "显著偏低",
        "A": "异常",
        "AA": "危急值异常",
        "N": "正常",
        "POS": "阳性",
        "NEG": "阴性",
        "DET": "检出",
        "ND": "未检出",
    },
}
_LABELS = {
    "en": {
        "reference": "reference",
        "patient": "Patient: {gender}, born {year}",
        "patient-no-year": "Patient: sex {gender}, year of birth not recorded",
        "encounter": "Encounter ({cls}) {status}",
        "from": "from",
        "to": "to",
        "admitted": "admitted",
        "discharged": "discharged",
        "report": "Report",
        "condition": "Condition",
        "study": "Study",
        "status": "status",
    },
    "zh": {
        "reference": "参考范围",
        "patient": "患者：{gender}，{year}年出生",
        "patient-no-year": "患者：性别{gender}，出生年份未记录",
        "encounter": "就诊（{cls}）{status}",
        "from": "自",
        "to": "至",
        "admitted": "入院",
        "discharged": "出院",
        "report": "报告",
        "condition": "诊断",
        "study": "影像检查",
        "status": "状态",
    },
}
_GENDER = {"zh": {"female": "女", "male": "男", "other": "其他", "unknown": "未知"}}
_SPACES = re.compile(r"\s+")
MAX_TEXT_CHARS = 2000  # a report longer than this is cut: the rest is not shown, so not citable


@dataclass(frozen=True)
class Fact:
    id: str  # "F1": what a sentence cites
    reference: str  # "Observation/<id>/_history/<version>"
    element: str  # the element the text comes from: "value", "conclusion", ...
    resource_type: str
    text: str  # the one line the model reads
    flag: str | None = None  # the interpretation code (H, L, A, ...), None when there is none
    abnormal: bool = False  # must be cited by some sentence (the omission rule)
    when: str = ""  # the clinical time, for ordering: newest first

    @property
    def line(self) -> str:
        return f"[{self.id}] {self.text}"


def version_reference(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}/_history/{resource['meta']['versionId']}"


def _clean(text: object) -> str:
    # One line per fact: free text is folded onto it, so no line of the record can pose as
    # another fact or as an instruction on a line of its own.
    return _SPACES.sub(" ", str(text)).strip()[:MAX_TEXT_CHARS]


def _concept(cc: dict[str, Any] | None) -> str:
    if not cc:
        return "unspecified"
    if cc.get("text"):
        return _clean(cc["text"])
    for coding in cc.get("coding", []):
        if coding.get("display"):
            return _clean(coding["display"])
    codes = [str(c.get("code")) for c in cc.get("coding", []) if c.get("code")]
    return codes[0] if codes else "unspecified"


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _quantity(q: dict[str, Any]) -> str:
    unit = q.get("unit") or q.get("code") or ""
    return f"{q.get('comparator', '')}{_number(q.get('value', ''))} {unit}".strip()


def _range(obs: dict[str, Any]) -> str | None:
    for rng in obs.get("referenceRange") or []:
        if rng.get("text"):
            return _clean(rng["text"])
        low, high = rng.get("low"), rng.get("high")
        if low and high:
            unit = high.get("unit") or low.get("unit") or ""
            return f"{_number(low.get('value'))}-{_number(high.get('value'))} {unit}".strip()
        if low:
            return f">={_quantity(low)}"
        if high:
            return f"<={_quantity(high)}"
    return None


def _value(obs: dict[str, Any]) -> str | None:
    if "valueQuantity" in obs:
        return _quantity(obs["valueQuantity"])
    if "valueString" in obs:
        return _clean(obs["valueString"])
    if "valueCodeableConcept" in obs:
        return _concept(obs["valueCodeableConcept"])
    for key in ("valueInteger", "valueBoolean", "valueDateTime"):
        if key in obs:
            return _clean(obs[key])
    return None


def interpretation(obs: dict[str, Any]) -> str | None:
    for cc in obs.get("interpretation", []):
        for coding in cc.get("coding", []):
            if coding.get("code"):
                return str(coding["code"]).upper()
    return None


def _day(value: object) -> str | None:
    text = str(value or "")
    return text[:10] if len(text) >= 10 else (text or None)


def _observation(obs: dict[str, Any], language: str) -> Fact | None:
    value = _value(obs)
    if value is None:
        return None
    flag = interpretation(obs)
    labels = _LABELS[language]
    text = f"{_concept(obs.get('code'))}: {value}"
    details = []
    if flag:
        details.append(_FLAG_WORDS[language].get(flag, flag))
    ref = _range(obs)
    if ref:
        details.append(f"{labels['reference']} {ref}")
    if details:
        text += f" ({'; '.join(details)})"
    day = _day(obs.get("effectiveDateTime") or obs.get("issued"))
    if day:
        text += f", {day}"
    return Fact(
        "",
        version_reference(obs),
        "value",
        "Observation",
        text,
        flag,
        flag in ABNORMAL_FLAGS,
        str(obs.get("effectiveDateTime") or obs.get("issued") or ""),
    )


def _report(rep: dict[str, Any], language: str) -> Fact:
    labels = _LABELS[language]
    text = f"{labels['report']} {_concept(rep.get('code'))} ({rep.get('status')})"
    day = _day(rep.get("effectiveDateTime") or rep.get("issued"))
    if day:
        text += f", {day}"
    if rep.get("conclusion"):
        text += f": {_clean(rep['conclusion'])}"
        return Fact("", version_reference(rep), "conclusion", "DiagnosticReport", text, when=day or "")
    return Fact("", version_reference(rep), "status", "DiagnosticReport", text, when=day or "")


def _patient(pat: dict[str, Any], language: str) -> Fact:
    gender = str(pat.get("gender", "unknown"))
    gender = _GENDER.get(language, {}).get(gender, gender)
    year = str(pat.get("birthDate", ""))[:4]
    text = _LABELS[language]["patient" if year else "patient-no-year"].format(gender=gender, year=year)
    return Fact("", version_reference(pat), "demographics", "Patient", text)


# v3 ActCode inpatient classes, and the v2 patient class (PV1-2 "I") as some maps pass it on.
_INPATIENT = frozenset({"IMP", "ACUTE", "NONAC", "IP", "I", "inpatient", "inpatient encounter"})


def _encounter(enc: dict[str, Any], language: str) -> Fact:
    """An inpatient stay reads "admitted ... discharged ...", the words a summary uses."""
    labels = _LABELS[language]
    cls = enc.get("class", {})
    name = cls.get("display") or cls.get("code", "?")
    text = labels["encounter"].format(cls=name, status=enc.get("status"))
    stay = cls.get("code") in _INPATIENT or name in _INPATIENT
    period = enc.get("period", {})
    if period.get("start"):
        text += f" {labels['admitted' if stay else 'from']} {_day(period['start'])}"
    if period.get("end"):
        text += f" {labels['discharged' if stay else 'to']} {_day(period['end'])}"
    return Fact("", version_reference(enc), "period", "Encounter", text, when=str(period.get("start", "")))


def _condition(cond: dict[str, Any], language: str) -> Fact:
    text = f"{_LABELS[language]['condition']}: {_concept(cond.get('code'))}"
    status = cond.get("clinicalStatus") or cond.get("verificationStatus")
    if status:
        text += f" ({_concept(status)})"
    day = _day(cond.get("onsetDateTime") or cond.get("recordedDate"))
    if day:
        text += f", {day}"
    return Fact("", version_reference(cond), "code", "Condition", text, when=day or "")


def _study(study: dict[str, Any], language: str) -> Fact:
    modalities = sorted({str(m.get("code")) for m in study.get("modality", []) if m.get("code")})
    text = f"{_LABELS[language]['study']} {' '.join(modalities) or '?'}"
    if study.get("description"):
        text += f": {_clean(study['description'])}"
    day = _day(study.get("started"))
    if day:
        text += f", {day}"
    return Fact("", version_reference(study), "description", "ImagingStudy", text, when=day or "")


_RENDER = {
    "Patient": _patient,
    "Encounter": _encounter,
    "Condition": _condition,
    "DiagnosticReport": _report,
    "ImagingStudy": _study,
}


def resource_facts(resource: dict[str, Any], language: str) -> list[Fact]:
    """The facts of one resource version, unnumbered (``id`` empty)."""
    if resource.get("resourceType") == "Observation":
        fact = _observation(resource, language)
        return [fact] if fact else []
    render = _RENDER.get(str(resource.get("resourceType")))
    return [render(resource, language)] if render else []


_TYPE_ORDER = {"Patient": 0, "Encounter": 1, "Condition": 2, "DiagnosticReport": 3, "ImagingStudy": 4}


def number_facts(facts: Iterable[Fact]) -> tuple[Fact, ...]:
    """Abnormal first (what a clinician reads first, and what must be cited), then the
    rest by kind; each group newest first; ids F1, F2, ... in that order."""
    # Two stable sorts, because ISO time strings cannot be negated in one key.
    ordered = sorted(facts, key=lambda f: f.reference)
    ordered.sort(key=lambda f: f.when, reverse=True)
    ordered.sort(key=lambda f: (not f.abnormal, _TYPE_ORDER.get(f.resource_type, 9)))
    return tuple(replace(f, id=f"F{i}") for i, f in enumerate(ordered, start=1))


def facts_for(resources: Sequence[dict[str, Any]], language: str) -> tuple[Fact, ...]:
    return number_facts(fact for r in resources for fact in resource_facts(r, language))
