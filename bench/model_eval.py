"""Injected-error evaluation of the summary verifier (issue 18).

    .venv/bin/python -m bench.model_eval [--limit N] [--json PATH] [--examples K] [--real-model N]

Contexts: every HL7 v2 message of ``../shared/corpus`` (real messages from other projects,
read in place), the canonical fixtures (tests/fixtures/messages.py) and the synthetic
hospital (sidecar/hospital.py: admissions, lab results, discharges, CT studies; plus, made
here, its imaging reports and, for its Chinese patients, a GB18030 ORU with Chinese lab
names and a Chinese CT report with 未见 negations). Each message goes through what
``sidecar convert --deid`` runs (sidecar.convert.convert_file with a throw-away secret);
the de-identified resources are grouped by patient, versioned, and each summary template
picks its facts, in English and in Chinese.

For each fact set: faithful answers in several paraphrase styles (what a careful model
writes, not the fact lines copied; every abnormal fact cited), and answers with exactly one
planted error per type, planted into faithful answers the verifier accepted. An answer
counts as caught when ``sandbox.verifier.verify`` refuses it; the codes that fired are
reported. Speed is ``verify()`` per summary, one process. Figures: docs/model-eval.md.

Acceptance (issue 18): >= 99% caught for every type with a deterministic signal (value,
unit, date, flag, negation, citations, extra number, identifier, omission), a figure for
invented diagnoses, <= 1% of faithful answers refused, p95 verify <= 50 ms.

``--real-model N``: N contexts through SmolLM2-135M-Instruct served by llama-cpp-python
(tests/fixtures/llm_server.py) and sandbox.llm.OpenAIChatModel, asked once more with the
failures named when the first answer fails, as the runner does; with ``--model-url``, any
OpenAI-compatible server instead (a hospital's own model, measured the same way).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from deid import Vault
from mapping import MappingOptions
from sandbox.answer import Sentence
from sandbox.claims import read_claims
from sandbox.facts import Fact
from sandbox.templates import TEMPLATES
from sandbox.verifier import Report, verify
from sidecar import hospital
from sidecar.convert import Converted, convert_dicom, convert_file
from tests.corpus import shared_dir
from tests.fixtures.messages import ADT_A01, ORU_R01
from worker.options import DicomPipelineOptions

__all__ = [
    "DETERMINISTIC",
    "ERROR_TYPES",
    "Answer",
    "Context",
    "Draft",
    "Evaluation",
    "Part",
    "build_contexts",
    "evaluate",
    "faithful_answers",
    "main",
    "plant",
]

LANGUAGES = ("en", "zh")
# A throw-away secret: contexts are de-identified exactly as `sidecar convert --deid` does,
# under keys nobody keeps.
_SECRET = b"model-eval bench: a throw-away de-identification key"
_MAX_SENTENCES = 12  # the prompt's default limit (sandbox.prompt)
_TS = "%Y%m%d%H%M%S"


# ---------------------------------------------------------------------------------------
# Contexts: de-identified resources, grouped by patient, and each template's facts
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    name: str  # source, group and pseudonym prefix, template, language: no identifier
    source: str  # corpus | fixtures | hospital
    kind: str
    language: str
    facts: tuple[Fact, ...]
    resources: dict[str, dict[str, Any]]  # version reference -> the resource version


@dataclass
class Notes:
    """What building the contexts met: the conversions that failed, the template errors."""

    messages: Counter[str] = field(default_factory=Counter)  # source -> messages converted
    failures: list[str] = field(default_factory=list)  # "<file>: <reason>" (no identifiers)
    template_errors: Counter[str] = field(default_factory=Counter)  # "<kind>: <exception>"
    duplicates: int = 0  # fact sets another template of the same patient already gave
    corpus: str = ""  # where the corpus was read, or why not


# Synthetic messages made here for the hospital's patients, sent in the same feed: imaging
# reports (English and Chinese), serology with qualitative results, and for its Chinese
# patients a lab panel with Chinese names in GB18030.
_CT_EN = [
    (
        "CT chest without contrast",
        "Chest CT. The lungs are clear apart from a small nodule.",
        ["8 mm ground-glass nodule in the right upper lobe.", "No pleural effusion.",
         "No mediastinal lymphadenopathy."],
    ),
    (
        "CT chest without contrast",
        "Chest CT for cough.",
        ["Consolidation in the left lower lobe.", "No pneumothorax.", "No pleural effusion."],
    ),
    (
        "CT head without contrast",
        "Head CT after a fall.",
        ["No acute intracranial hemorrhage.", "No mass effect or midline shift."],
    ),
    (
        "CT chest with contrast",
        "Chest CT, follow-up.",
        ["Mild cardiomegaly.", "No focal consolidation, pleural effusion or pneumothorax."],
    ),
]  # fmt: skip
_CT_ZH = [
    (
        "胸部CT平扫",
        "胸部CT平扫检查。",
        ["右肺上叶见磨玻璃结节，大小约8 mm。", "双肺未见实变。", "未见胸腔积液。", "纵隔未见肿大淋巴结。"],
    ),
    (
        "胸部CT平扫",
        "咳嗽待查。",
        ["左肺下叶见斑片状实变影。", "未见胸腔积液及气胸。"],
    ),
    (
        "胸部CT增强",
        "复查。",
        ["未见胸腔积液。", "右肺中叶见小结节，大小约5 mm，较前相仿。"],
    ),
    (
        "头颅CT平扫",
        "外伤后头颅CT。",
        ["颅内未见出血。", "脑室系统未见扩大。", "中线结构居中。"],
    ),
]  # fmt: skip
# (code, name, unit, low, high, decimals): the Chinese panel, local codes as Chinese LIS send them.
_LABS_ZH = [
    ("K", "血钾", "mmol/L", 3.5, 5.3, 1),
    ("NA", "血钠", "mmol/L", 137, 147, 0),
    ("GLU", "空腹血糖", "mmol/L", 3.9, 6.1, 1),
    ("CREA", "肌酐", "umol/L", 57, 111, 0),
    ("WBC", "白细胞计数", "10*9/L", 3.5, 9.5, 1),
    ("HGB", "血红蛋白", "g/L", 130, 175, 0),
    ("ALT", "丙氨酸氨基转移酶", "U/L", 9, 50, 0),
]
_QUALITATIVE = {
    "en": [("5196-1", "Hepatitis B surface antigen"), ("2888-6", "Protein [Presence] in Urine")],
    "zh": [("HBSAG", "乙肝表面抗原"), ("UPRO", "尿蛋白")],
}
_POS_NEG = {"en": ("POS^Positive", "NEG^Negative"), "zh": ("POS^阳性", "NEG^阴性")}


def _msh(kind: str, control_id: str, when: datetime, charset: str) -> str:
    return (
        f"MSH|^~\\&|LIS|DEMO-HOSP|SIDECAR|DEMO-HOSP|{when:{_TS}}+0800||{kind}|{control_id}|P|2.5.1"
        f"||||||{charset}"
    )


def _pid(p: hospital.SyntheticPatient) -> str:
    return f"PID|1||{p.mrn}^^^{hospital.AUTHORITY}^MR||{p.family}^{p.given}||{p.birth_date}|{p.sex}"


def _imaging_report(
    p: hospital.SyntheticPatient, n: int, when: datetime, report: tuple[str, str, list[str]]
) -> str:
    name, findings, impression = report
    obr = hospital.segment(
        "OBR",
        {1: "1", 2: f"RIS{n:05d}-P", 3: f"RIS{n:05d}", 4: f"CT{n % 7}^{name}^L", 7: f"{when:{_TS}}+0800",
         22: f"{when:{_TS}}+0800", 24: "CT", 25: "F"},
    )  # fmt: skip
    segments = [_msh("ORU^R01^ORU_R01", f"RIS{n:05d}", when, "UNICODE UTF-8"), _pid(p), obr]
    segments.append(f"OBX|1|TX|18782-3^Radiology study observation^LN||{findings}||||||F")
    segments += [f"OBX|{i}|TX|19005-8^Impression^LN||{line}||||||F" for i, line in enumerate(impression, 2)]
    return "\r".join(segments) + "\r"


def _qualitative(
    p: hospital.SyntheticPatient, n: int, when: datetime, language: str, rng: random.Random
) -> str:
    obr = hospital.segment(
        "OBR",
        {1: "1", 2: f"SER{n:05d}-P", 3: f"SER{n:05d}", 4: "SERO^Serology^L", 7: f"{when:{_TS}}+0800",
         22: f"{when:{_TS}}+0800", 25: "F"},
    )  # fmt: skip
    segments = [_msh("ORU^R01^ORU_R01", f"SER{n:05d}", when, "UNICODE UTF-8"), _pid(p), obr]
    positive, negative = _POS_NEG[language]
    for i, (code, name) in enumerate(_QUALITATIVE[language], start=1):
        pos = rng.random() < 0.4
        value, flag = (positive, "A") if pos else (negative, "N")
        segments.append(f"OBX|{i}|CWE|{code}^{name}^LN||{value}|||{flag}|||F|||{when:{_TS}}+0800")
    return "\r".join(segments) + "\r"


def _lab_zh(p: hospital.SyntheticPatient, n: int, when: datetime, rng: random.Random) -> bytes:
    """The Chinese lab panel, sent in GB18030 as Chinese LIS do."""
    obr = hospital.segment(
        "OBR",
        {1: "1", 2: f"ZH{n:05d}-P", 3: f"ZH{n:05d}", 4: "SHENGHUA^生化全项^L", 7: f"{when:{_TS}}+0800",
         22: f"{when:{_TS}}+0800", 25: "F"},
    )  # fmt: skip
    segments = [_msh("ORU^R01^ORU_R01", f"ZH{n:05d}", when, "GB18030"), _pid(p), obr]
    for i, (code, name, unit, low, high, decimals) in enumerate(_LABS_ZH, start=1):
        spread = (high - low) * 0.6
        value = round(rng.uniform(low - spread, high + spread), decimals)
        flag = "H" if value > high else "L" if value < low else "N"
        if flag == "H" and value > high + spread * 0.8:
            flag = "HH"  # a critical value now and then
        segments.append(
            f"OBX|{i}|NM|{code}^{name}^L||{value:.{decimals}f}|{unit}|{low}-{high}|{flag}|||F|||{when:{_TS}}+0800"
        )
    return ("\r".join(segments) + "\r").encode("gb18030")


def _write_synthetic(folder: Path, patients: int) -> dict[str, list[Path]]:
    """The synthetic messages as files (what `sidecar convert` reads), by source."""
    files: dict[str, list[Path]] = defaultdict(list)
    (folder / "fixtures").mkdir()
    for name, text in (("adt_a01", ADT_A01), ("oru_r01", ORU_R01)):
        path = folder / "fixtures" / f"{name}.hl7"
        path.write_bytes(text.encode())
        files["fixtures"].append(path)
    people = hospital.make_patients(patients)
    (folder / "hospital").mkdir()
    for i, raw in enumerate(hospital.feed(people)):
        path = folder / "hospital" / f"feed-{i:05d}.hl7"
        path.write_bytes(raw)
        files["hospital"].append(path)
    rng = random.Random(18)
    start = datetime(2026, 3, 1, 8, 0)
    (folder / "zh").mkdir()
    for n, p in enumerate(people):
        when = start + timedelta(minutes=17 * n, hours=5)
        if p.chinese:
            report = _imaging_report(p, n, when, _CT_ZH[(n // 3) % len(_CT_ZH)])
            lab = _lab_zh(p, n, when + timedelta(hours=1), rng)
            (folder / "zh" / f"ct-{n:03d}.hl7").write_bytes(report.encode())
            (folder / "zh" / f"lab-{n:03d}.hl7").write_bytes(lab)
            qual = _qualitative(p, n, when + timedelta(hours=2), "zh", rng)
            (folder / "zh" / f"sero-{n:03d}.hl7").write_bytes(qual.encode())
            files["hospital"] += [folder / "zh" / f"{k}-{n:03d}.hl7" for k in ("ct", "lab", "sero")]
        else:
            report = _imaging_report(p, n, when, _CT_EN[n % len(_CT_EN)])
            qual = _qualitative(p, n, when + timedelta(hours=2), "en", rng)
            (folder / "hospital" / f"ct-{n:03d}.hl7").write_bytes(report.encode())
            (folder / "hospital" / f"sero-{n:03d}.hl7").write_bytes(qual.encode())
            files["hospital"] += [folder / "hospital" / f"{k}-{n:03d}.hl7" for k in ("ct", "sero")]
    with warnings.catch_warnings():
        # The synthetic PACS puts Chinese names in a Latin-1 data set: pydicom says so, once each.
        warnings.simplefilter("ignore", UserWarning)
        for ds in hospital.imaging(people, min(len(people), 6)):
            path = folder / "hospital" / f"study-{ds.AccessionNumber}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files["hospital"].append(path)
    return files


def _owner(resource: dict[str, Any]) -> str | None:
    if resource["resourceType"] == "Patient":
        return str(resource["id"])
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("Patient/"):
            return str(ref["reference"]).removeprefix("Patient/")
    return None


def _convert(
    paths: Iterable[Path], vault: Vault, notes: Notes, source: str
) -> Iterator[list[dict[str, Any]]]:
    options = MappingOptions(default_timezone="Asia/Shanghai")
    dicom = DicomPipelineOptions(authority=hospital.AUTHORITY)
    for path in paths:
        results = (
            [convert_dicom(path, options, vault, dicom)]
            if path.suffix == ".dcm"
            else list(convert_file(path, options, vault, dicom))
        )
        for result in results:
            if isinstance(result, Converted):
                notes.messages[source] += 1
                yield [entry["resource"] for entry in result.bundle.get("entry", [])]
            else:
                notes.failures.append(f"{source}/{path.name}: {result.reason}")


def _groups(
    batches: Sequence[list[dict[str, Any]]], scopes: Sequence[str]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Resources by (scope, patient); a resource sent again is its next version, as the
    store keeps it."""
    latest: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
    versions: Counter[tuple[str, str, str]] = Counter()
    for scope, batch in zip(scopes, batches, strict=True):
        for resource in batch:
            patient = _owner(resource)
            if patient is None:
                continue
            key = (scope, patient)
            rid = (str(resource["resourceType"]), str(resource["id"]))
            versions[(key[0], *rid)] += 1
            copy = json.loads(json.dumps(resource))
            copy.setdefault("meta", {})["versionId"] = str(versions[(key[0], *rid)])
            latest[key][rid] = copy
    return {key: list(found.values()) for key, found in latest.items()}


def build_contexts(
    *, corpus: bool = True, hospital_patients: int = 30, languages: Sequence[str] = LANGUAGES
) -> tuple[list[Context], Notes]:
    notes = Notes()
    vault = Vault(_SECRET)
    contexts: list[Context] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    groups: list[tuple[str, dict[tuple[str, str], list[dict[str, Any]]]]] = []
    with tempfile.TemporaryDirectory(prefix="model-eval-") as tmp:
        synthetic = _write_synthetic(Path(tmp), hospital_patients)
        for source in ("fixtures", "hospital"):
            batches = list(_convert(synthetic[source], vault, notes, source))
            groups.append((source, _groups(batches, [source] * len(batches))))
        if corpus:
            folder = shared_dir() / "corpus" / "hl7"
            paths = sorted(folder.glob("*.hl7")) if folder.is_dir() else []
            notes.corpus = f"{len(paths)} files in {folder}" if paths else f"no corpus at {folder}"
            named: list[list[dict[str, Any]]] = []
            names: list[str] = []
            for path in paths:
                for batch in _convert([path], vault, notes, "corpus"):
                    named.append(batch)
                    names.append(path.stem)
            # Each corpus file comes from another project: its patients are its own.
            groups.append(("corpus", _groups(named, names)))
    merged = sorted((key, source, resources) for source, found in groups for key, resources in found.items())
    for (scope, patient), source, resources in merged:
        by_ref = {_ref(r): r for r in resources}
        for language in languages:
            for kind, template in TEMPLATES.items():
                try:
                    facts = template.facts(resources, language)
                except Exception as exc:
                    notes.template_errors[f"{kind}: {type(exc).__name__}: {exc}"] += 1
                    continue
                if len(facts) < 2:
                    continue  # a Patient line alone is nothing to summarise
                signature = (language, tuple(f.line for f in facts))
                if signature in seen:
                    notes.duplicates += 1
                    continue
                seen.add(signature)
                label = scope if source == "corpus" else source
                name = f"{label}/{patient[:8]} {kind} {language}"
                contexts.append(Context(name, source, kind, language, facts, by_ref))
    return contexts, notes


def _ref(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}/_history/{resource['meta']['versionId']}"


# ---------------------------------------------------------------------------------------
# Answers: sentences built from parts, so that one part can be changed to plant an error
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    text: str
    slot: str = ""  # value, unit, date, flag, finding: what a planted error may change
    fact: str = ""  # the fact id the slot restates
    fmt: str = ""  # how a date or flag is written (its vocabulary), to write the changed one alike
    data: str = ""  # what the slot means: the ISO day, the flag code


@dataclass(frozen=True)
class Draft:
    parts: tuple[Part, ...]
    facts: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts)

    def sentence(self) -> Sentence:
        return Sentence(self.text, self.facts)


@dataclass(frozen=True)
class Answer:
    style: str
    drafts: tuple[Draft, ...]
    planted: str = ""  # the error type, "" for a faithful answer
    note: str = ""  # what was changed
    where: int = -1  # the index of the changed sentence

    def sentences(self) -> list[Sentence]:
        return [d.sentence() for d in self.drafts]


@dataclass(frozen=True)
class Info:
    """What a fact says, read from its resource the way a model reads the fact line."""

    fact: Fact
    shape: str  # quantity, coded, report, patient, encounter, condition, study, other
    name: str = ""
    value: str = ""  # a quantity's number as the fact line shows it
    comparator: str = ""
    unit: str = ""
    text: str = ""  # a coded or text value, a report's conclusion, a study's description
    day: str = ""  # YYYY-MM-DD
    range: str = ""
    extra: tuple[str, ...] = ()  # patient: gender, year; encounter: class, status, start, end


def _num(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _concept(cc: Any) -> str:
    if not isinstance(cc, dict):
        return ""
    if cc.get("text"):
        return " ".join(str(cc["text"]).split())
    for coding in cc.get("coding", []):
        if coding.get("display"):
            return " ".join(str(coding["display"]).split())
    codes = [str(c["code"]) for c in cc.get("coding", []) if c.get("code")]
    return codes[0] if codes else ""


def _short(name: str) -> str:
    """What a writer calls a lab: "Potassium" for "Potassium [Moles/volume] in Serum or Plasma"."""
    short = name.split(" [", 1)[0].rstrip(": ").strip()
    return short or name


def _day_of(value: object) -> str:
    text = str(value or "")
    return text[:10] if re.fullmatch(r"\d{4}-\d{2}-\d{2}.*", text) else ""


def _range(obs: dict[str, Any]) -> str:
    for rng in obs.get("referenceRange") or []:
        if rng.get("text"):
            return " ".join(str(rng["text"]).split())
        low, high = rng.get("low"), rng.get("high")
        if low and high:
            return f"{_num(low.get('value'))}-{_num(high.get('value'))}"
    return ""


def info(fact: Fact, resource: dict[str, Any]) -> Info:
    kind = resource["resourceType"]
    if kind == "Observation":
        name = _short(_concept(resource.get("code")))
        day = _day_of(resource.get("effectiveDateTime") or resource.get("issued"))
        q = resource.get("valueQuantity")
        if isinstance(q, dict) and "value" in q:
            unit = str(q.get("unit") or q.get("code") or "")
            return Info(fact, "quantity", name, _num(q["value"]), str(q.get("comparator", "")), unit,
                        day=day, range=_range(resource))  # fmt: skip
        for key in ("valueString", "valueCodeableConcept"):
            if key in resource:
                value = resource[key] if key == "valueString" else _concept(resource[key])
                return Info(fact, "coded", name, text=" ".join(str(value).split()), day=day)
        return Info(fact, "other")
    if kind == "DiagnosticReport":
        day = _day_of(resource.get("effectiveDateTime") or resource.get("issued"))
        name = _concept(resource.get("code"))
        if resource.get("conclusion"):
            text = " ".join(str(resource["conclusion"]).split())
            return Info(fact, "report", name, text=text, day=day)
        return Info(fact, "report-status", name, text=str(resource.get("status", "")), day=day)
    if kind == "Patient":
        year = str(resource.get("birthDate", ""))[:4]
        return Info(fact, "patient", extra=(str(resource.get("gender", "")), year if year.isdigit() else ""))
    if kind == "Encounter":
        cls = resource.get("class", {})
        period = resource.get("period", {})
        return Info(
            fact,
            "encounter",
            extra=(
                str(cls.get("display") or cls.get("code", "")),
                str(resource.get("status", "")),
                _day_of(period.get("start")),
                _day_of(period.get("end")),
            ),
        )
    return Info(fact, "other")


# How each style writes a flag: code -> words; the planted flag error writes the opposite.
_FLAG_VOCAB = {
    "en": {"H": "high", "L": "low", "HH": "critically high", "LL": "critically low", "A": "abnormal",
           "N": "normal"},
    "en-verb": {"H": "elevated", "L": "decreased", "HH": "critically elevated", "LL": "critically decreased",
                "A": "abnormal", "N": "within the normal range"},
    "en-range": {"H": "above the reference range", "L": "below the reference range",
                 "HH": "above the reference range", "LL": "below the reference range",
                 "A": "outside the reference range", "N": "within the reference range"},
    "zh": {"H": "偏高", "L": "偏低", "HH": "危急值偏高", "LL": "危急值偏低", "A": "异常", "N": "正常"},
    "zh-verb": {"H": "升高", "L": "降低", "HH": "危急值升高", "LL": "危急值降低", "A": "异常",
                "N": "在正常范围内"},
}  # fmt: skip
_FLIP = {"H": "L", "L": "H", "HH": "LL", "LL": "HH", "N": "A", "A": "N"}
_MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
                "October", "November", "December")  # fmt: skip


def _write_date(day: str, fmt: str) -> str:
    y, m, d = (int(x) for x in day.split("-"))
    if fmt == "long":
        return f"{_MONTH_NAMES[m - 1]} {d}, {y}"
    if fmt == "dmy":
        return f"{d} {_MONTH_NAMES[m - 1]} {y}"
    if fmt == "zh":
        return f"{y}年{m}月{d}日"
    return day


def _date(i: Info, fmt: str = "iso") -> Part:
    return Part(_write_date(i.day, fmt), "date", i.fact.id, fmt, i.day)


def _flag(i: Info, vocab: str) -> Part | None:
    code = i.fact.flag
    words = _FLAG_VOCAB[vocab]
    if code not in words:
        return None
    return Part(words[code], "flag", i.fact.id, vocab, code)


def _value(i: Info) -> list[Part]:
    parts = [Part(i.comparator + i.value if i.comparator else i.value, "value", i.fact.id, data=i.comparator)]
    if i.unit:
        parts += [Part(" "), Part(i.unit, "unit", i.fact.id)]
    return parts


def _lower_first(name: str) -> str:
    # "Potassium" mid-sentence is "potassium"; "HEMATOCRITO" or "pH" stay as written.
    return (
        name[0].lower() + name[1:] if name[:1].isupper() and name[1:2].islower() and " " not in name else name
    )


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


_SENTENCE = re.compile(r"(?<=[.。!?！？])\s*")


def _findings(text: str, fact: str) -> list[Part]:
    return [Part(s.strip(), "finding", fact) for s in _SENTENCE.split(text) if s.strip()]


_CJK = re.compile(r"[\u4e00-\u9fff]")
_EN_LIST = re.compile(r"^No (.+?), (.+?),? or (.+?)\.?$")
_ZH_LIST = re.compile(r"^(.*?)未见(.+?)[及和与](.+?)。?$")


def _restated(findings: list[Part], language: str) -> list[Part]:
    """Findings the way a writer condenses them: one run, a negated list spelt out
    ("no A, no B and no C"; 未见A，未见B), "见" ("seen") dropped."""
    out: list[Part] = []
    for n, part in enumerate(findings):
        text = part.text
        if not _CJK.search(text):
            text = text.rstrip(".")
            listed = _EN_LIST.match(text)
            if listed:
                text = f"no {listed.group(1)}, no {listed.group(2)} and no {listed.group(3)}"
            elif text[:1].isupper() and text[1:2].islower():
                text = text[0].lower() + text[1:]
        else:
            text = text.rstrip("。").replace("见", "", 1) if "未见" not in text else text.rstrip("。")
            listed = _ZH_LIST.match(text)
            if listed:
                text = f"{listed.group(1)}未见{listed.group(2)}，未见{listed.group(3)}"
        if n:
            out.append(Part("; " if language == "en" else "，"))
        out.append(replace(part, text=text))
    if language == "zh":
        return [*_glue(out), Part("。")]
    return [*out, Part(".")]


_QUALITATIVE_WORDS = {"negative", "positive", "detected", "not detected", "阴性", "阳性", "检出", "未检出"}


def _finding(i: Info, text: str) -> Part:
    """A coded result as a finding a negation may be planted in: narrative lines (an
    impression, a sentence of a report) and qualitative results; not codes or numbers."""
    narrative = text.rstrip().endswith((".", "。")) or i.text.rstrip().endswith((".", "。"))
    qualitative = text.lower() in _QUALITATIVE_WORDS
    return Part(text, "finding" if narrative or qualitative else "", i.fact.id)


def _inpatient(cls: str) -> bool:
    return "inpatient" in cls.lower() or cls.upper() in ("IMP", "IP", "ACUTE")


def _en(i: Info, style: str) -> list[Part] | None:
    """One fact in English, the style's way; None: the style writes it as the fact line."""
    f = i.fact.id
    if style == "en-grouped":  # what is not a pair of results is written as in en-flag-first
        style = "en-flag-first"
    if i.shape == "quantity" and i.name:
        name, day = i.name, i.day
        if style == "en-flag-first":
            flag = _flag(i, "en")
            head = [Part(_cap(name) + " was ")]
            if flag and flag.data != "N":
                parts = [*head, flag, Part(" at "), *_value(i)]
            else:
                parts = [*head, *_value(i)]
            if day:
                parts += [Part(" on "), _date(i)]
            if flag and flag.data == "N":
                parts += [Part(", which is "), flag]
            return [*parts, Part(".")]
        if style == "en-date-first":
            flag = _flag(i, "en")
            parts = [Part("On "), _date(i, "long"), Part(", ")] if day else []
            parts += [Part((_lower_first(name) if day else _cap(name)) + " was "), *_value(i)]
            if flag:
                parts += [Part(" ("), flag, Part(")")]
            return [*parts, Part(".")]
        if style == "en-range":
            verb, against = _flag(i, "en-verb"), _flag(i, "en-range")
            if verb is None or against is None:
                return None
            if verb.data == "N":
                parts = [Part(_cap(name) + " of "), *_value(i)]
                if day:
                    parts += [Part(" on "), _date(i, "dmy")]
                parts += [Part(" was "), against]
            else:
                parts = [Part(_cap(name) + " was "), verb, Part(" at "), *_value(i)]
                if day:
                    parts += [Part(" on "), _date(i, "dmy")]
                parts += [Part(", "), against]
            if i.range:
                parts += [Part(f" of {i.range}")]
            return [*parts, Part(".")]
    if i.shape == "coded" and i.name and i.text.endswith("."):  # a line of a report: "Impression: ..."
        head = [Part(_cap(i.name))] + ([Part(" ("), _date(i, "dmy"), Part(")")] if i.day else [])
        return [*head, Part(": "), _finding(i, _lower_first(i.text.rstrip("."))), Part(".")]
    if i.shape == "coded" and i.name:
        flag = _flag(i, "en")
        parts = [Part(f"{_cap(i.name)} was "), _finding(i, _lower_first(i.text))]
        if flag and style != "en-date-first":
            parts += [Part(" ("), flag, Part(")")]
        if i.day:
            parts += [Part(" on "), _date(i, "long" if style == "en-date-first" else "iso")]
        return [*parts, Part(".")]
    if i.shape == "report" and i.name:
        findings = _findings(i.text, f)
        if style == "en-date-first" and i.day:
            return [Part("On "), _date(i, "long"), Part(f", the {i.name} reported: "), *_join(findings, " ")]
        if style == "en-range":
            head = [Part(f"{_cap(i.name)}")] + ([Part(" ("), _date(i, "dmy"), Part(")")] if i.day else [])
            return [*head, Part(": "), *_restated(findings, "en")]
        head = [Part(f"The {i.name}")] + ([Part(" on "), _date(i)] if i.day else []) + [Part(" showed: ")]
        return [*head, *_join(findings, " ")]
    if i.shape == "report-status" and i.name and i.text:
        parts = [Part(f"The {i.name} report")]
        if i.day:
            parts += [Part(" of "), _date(i, "long" if style == "en-date-first" else "iso")]
        return [*parts, Part(f" is {i.text}.")]
    if i.shape == "patient":
        gender, year = i.extra
        if gender in ("male", "female") and year:
            return [Part(f"The patient is {gender}, born in {year}.")]
        return None
    if i.shape == "encounter":
        cls, status, start, end = i.extra
        if not start:
            return None
        if style == "en-date-first" and _inpatient(cls):  # the way discharge summaries put it
            parts = [
                Part("The patient was admitted on "),
                Part(_write_date(start, "long"), "date", f, "long", start),
            ]
            if end:
                parts += [Part(" and discharged on "), Part(_write_date(end, "long"), "date", f, "long", end)]
            return [*parts, Part(".")]
        parts = [Part(f"The {cls} encounter is {status}, from "), Part(start, "date", f, "iso", start)]
        if end:
            parts += [Part(" to "), Part(end, "date", f, "iso", end)]
        return [*parts, Part(".")]
    return None


def _zh(i: Info, style: str) -> list[Part] | None:
    f = i.fact.id
    if style == "zh-grouped":
        if i.shape == "report" and i.name and _CJK.search(i.text):
            # A Chinese writer runs the study's short name into its finding: 胸部CT未见胸腔积液。
            short = re.sub(r"(?:平扫|增强)$", "", i.name)
            findings = _restated(_findings(i.text, f), "zh")
            glue = [] if findings[0].text.startswith(("未见", "无")) else [Part("示")]
            return _glue([*([_date(i, "zh")] if i.day else []), Part(short), *glue, *findings])
        style = "zh-value-first"
    if i.shape == "quantity" and i.name:
        if style == "zh-date-first":
            flag = _flag(i, "zh")
            parts = [_date(i, "zh")] if i.day else []
            parts += [Part(i.name), *_value(i)]
            if flag:
                parts += [Part("，"), flag]
            return [*parts, Part("。")]
        if style == "zh-value-first":
            flag = _flag(i, "zh-verb")
            parts = [_date(i), Part("测得")] if i.day else []
            parts += [Part(i.name + "为"), *_value(i)]
            if flag:
                parts += [Part("，"), flag]
            if i.range:
                parts += [Part(f"（参考范围{i.range}）")]
            return [*parts, Part("。")]
    if i.shape == "coded" and i.name:
        flag = _flag(i, "zh")
        parts = [_date(i, "zh")] if i.day and style == "zh-date-first" else []
        parts += [Part(i.name), _finding(i, i.text.rstrip("."))]
        if flag:
            parts += [Part("（"), flag, Part("）")]
        return [*parts, Part("。")]
    if i.shape == "report" and i.name:
        findings = _findings(i.text, f)
        head = [_date(i, "zh")] if i.day and style == "zh-date-first" else []
        if style == "zh-date-first":
            return [*head, Part(f"{i.name}示："), *_join(findings, "")]
        return [*head, Part(f"{i.name}（"), _date(i), Part("）："), *_restated(findings, "zh")]
    if i.shape == "report-status" and i.name and i.text:
        return [
            Part(f"{i.name}报告"),
            *([Part("（"), _date(i), Part("）")] if i.day else []),
            Part(f"：{i.text}。"),
        ]
    if i.shape == "patient":
        gender, year = i.extra
        words = {"male": "男", "female": "女"}
        if gender in words and year:
            return [Part(f"患者为{words[gender]}性，{year}年出生。")]
        return None
    if i.shape == "encounter":
        cls, status, start, end = i.extra
        if not start:
            return None
        if style == "zh-value-first" and _inpatient(cls):  # the way Chinese discharge summaries put it
            parts = [Part("患者于"), Part(_write_date(start, "zh"), "date", f, "zh", start), Part("入院")]
            if end:
                parts += [Part("，"), Part(_write_date(end, "zh"), "date", f, "zh", end), Part("出院")]
            return [*parts, Part("。")]
        parts = [Part(f"就诊（{cls}）{status}，自"), Part(start, "date", f, "iso", start)]
        if end:
            parts += [Part("至"), Part(end, "date", f, "iso", end)]
        return [*parts, Part("。")]
    return None


def _glue(parts: list[Part]) -> list[Part]:
    """Chinese runs words together, but not two Latin words or numbers ("Potassium 4.2")."""
    out: list[Part] = []
    for part in parts:
        before, after = (out[-1].text[-1:] if out else ""), part.text[:1]
        if before.isascii() and before.isalnum() and after.isascii() and (after.isalnum() or after in "<>"):
            out.append(Part(" "))
        out.append(part)
    return out


def _join(parts: list[Part], sep: str) -> list[Part]:
    joined: list[Part] = []
    for n, part in enumerate(parts):
        if n:
            joined.append(Part(sep))
        joined.append(part)
    return joined


def _pair(a: Info, b: Info, language: str) -> list[Part] | None:
    """Two results of one day in one sentence, each with its value and flag."""
    if a.shape != "quantity" or b.shape != "quantity" or not a.name or not b.name or a.day != b.day:
        return None
    if language == "en":
        parts = [Part(_cap(a.name) + " was "), *_value(a)]
        fa, fb = _flag(a, "en"), _flag(b, "en")
        parts += [Part(" ("), fa, Part(")")] if fa else []
        parts += [Part(" and " + _lower_first(b.name) + " was "), *_value(b)]
        parts += [Part(" ("), fb, Part(")")] if fb else []
        parts += [Part(" on "), _date(a)] if a.day else []
        return [*parts, Part(".")]
    fa, fb = _flag(a, "zh"), _flag(b, "zh")
    parts = [_date(a, "zh")] if a.day else []
    parts += [Part(a.name), *_value(a)]
    parts += [Part("（"), fa, Part("）")] if fa else []
    parts += [Part("，" + b.name), *_value(b)]
    parts += [Part("（"), fb, Part("）")] if fb else []
    return [*parts, Part("。")]


STYLES = {
    "en": ("en-copy", "en-flag-first", "en-date-first", "en-range", "en-grouped"),
    "zh": ("zh-copy", "zh-date-first", "zh-value-first", "zh-grouped"),
}


def _pick(context: Context, rng: random.Random) -> list[Fact]:
    """The facts an answer speaks of: every abnormal one (the omission rule), then others
    up to the sentence limit, in the prompt's order."""
    abnormal = [f for f in context.facts if f.abnormal]
    others = [f for f in context.facts if not f.abnormal]
    chosen = set(rng.sample(others, min(len(others), max(0, _MAX_SENTENCES - len(abnormal) - 2))))
    return abnormal + [f for f in others if f in chosen]


def faithful_answers(context: Context, seed: int = 0) -> list[Answer]:
    """One faithful answer per style of the context's language."""
    answers = []
    infos = {f.id: info(f, context.resources[f.reference]) for f in context.facts}
    for style in STYLES[context.language]:
        rng = random.Random(f"{seed}/{context.name}/{style}")
        facts = _pick(context, rng)
        drafts: list[Draft] = []
        waiting: Info | None = None  # the grouped style's first result of a pair
        for fact in facts:
            i = infos[fact.id]
            if style.endswith("-grouped"):
                if i.shape == "quantity" and i.name:
                    if waiting is None:
                        waiting = i
                        continue
                    pair = _pair(waiting, i, context.language)
                    if pair is not None:
                        drafts.append(Draft(tuple(_glue(pair)), (waiting.fact.id, fact.id)))
                        waiting = None
                        continue
                    drafts.append(
                        _single(waiting, "en-flag-first" if context.language == "en" else "zh-date-first")
                    )
                    waiting = i
                    continue
                drafts.append(_single(i, style))
                continue
            drafts.append(_single(i, style))
        if waiting is not None:
            drafts.append(_single(waiting, "en-flag-first" if context.language == "en" else "zh-date-first"))
        answers.append(Answer(style, tuple(drafts)))
    return answers


def _single(i: Info, style: str) -> Draft:
    writer = _en if style.startswith("en") else _zh
    parts = None if style.endswith("-copy") else writer(i, style)
    if parts is None:
        parts = [Part(i.fact.text)]
    return Draft(tuple(_glue(parts) if style.startswith("zh") else parts), (i.fact.id,))


# ---------------------------------------------------------------------------------------
# Planted errors: one per answer
# ---------------------------------------------------------------------------------------

ERROR_TYPES = (
    "value",
    "unit",
    "date",
    "flag",
    "negation",
    "wrong-citation",
    "unknown-citation",
    "no-citation",
    "extra-number",
    "identifier",
    "omission",
    "invented-diagnosis",
)
# The check that should fire for each type (a refusal by another check still counts as caught).
EXPECTED_CODE = {
    "value": "value",
    "unit": "unit",
    "date": "date",
    "flag": "flag",
    "negation": "negation",
    "wrong-citation": "citation",
    "unknown-citation": "citation",
    "no-citation": "citation",
    "extra-number": "value",
    "identifier": "identifier",
    "omission": "omission",
    "invented-diagnosis": "term",
}
# Types with a deterministic signal: acceptance asks >= 99% caught for each.
DETERMINISTIC = frozenset(ERROR_TYPES) - {"invented-diagnosis"}

_UNIT_SWAP = {
    "mmol/l": "mg/dL", "mg/dl": "mmol/L", "g/dl": "g/L", "g/l": "g/dL", "umol/l": "mg/dL",
    "10*3/ul": "10*9/L", "10*9/l": "10*3/uL", "u/l": "U/mL", "%": "mmol/L", "meq/l": "mg/dL",
}  # fmt: skip
_DIAGNOSES = {
    "en": ["pneumonia", "acute kidney injury", "sepsis", "heart failure", "pulmonary embolism",
           "diabetic ketoacidosis", "cirrhosis", "myocardial infarction", "tuberculosis", "pancreatitis"],
    "zh": ["肺炎", "急性肾损伤", "脓毒症", "心力衰竭", "肺栓塞", "糖尿病酮症酸中毒", "肝硬化", "心肌梗死",
           "肺结核", "胰腺炎"],
}  # fmt: skip
# Connectors that are themselves no clinical term (a hedge, or nothing), so the diagnosis
# is the only new thing said.
_DIAGNOSIS_FORMS = {
    "en": [", suggesting {}", ", likely {}", " with {}"],
    "zh": ["，考虑{}", "，提示{}", "，疑似{}"],
}
_IDENTIFIERS = {
    "en": [" (MRN 88421907)", " (call 555-201-3344)", " (j.doe@example.org)", " (SSN 123-45-6789)"],
    "zh": ["（住院号88421907）", "（联系电话13912345678）", "（身份证号110105197604121234）",
           "（邮箱zhang.wei@example.cn）", "（MRN 88421907）"],
}  # fmt: skip
_NUMBERS = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Planting:
    answer: Answer
    context: Context
    rng: random.Random

    @property
    def language(self) -> str:
        return self.context.language

    def fact(self, fact_id: str) -> Fact:
        return next(f for f in self.context.facts if f.id == fact_id)

    def numbers(self, fact_ids: Iterable[str]) -> set[Decimal]:
        found: set[Decimal] = set()
        for fid in fact_ids:
            found.update(Decimal(n) for n in _NUMBERS.findall(self.fact(fid).text))
        return found

    def slots(self, slot: str) -> list[tuple[int, int]]:
        return [
            (d, p)
            for d, draft in enumerate(self.answer.drafts)
            for p, part in enumerate(draft.parts)
            if part.slot == slot
        ]

    def changed(self, d: int, p: int, part: Part, note: str, planted: str) -> Answer:
        draft = self.answer.drafts[d]
        parts = (*draft.parts[:p], part, *draft.parts[p + 1 :])
        drafts = (*self.answer.drafts[:d], replace(draft, parts=parts), *self.answer.drafts[d + 1 :])
        return replace(self.answer, drafts=drafts, planted=planted, note=note, where=d)

    def with_draft(self, d: int, draft: Draft, note: str, planted: str) -> Answer:
        drafts = (*self.answer.drafts[:d], draft, *self.answer.drafts[d + 1 :])
        return replace(self.answer, drafts=drafts, planted=planted, note=note, where=d)


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def _other_number(value: Decimal, places: int, avoid: set[Decimal], rng: random.Random) -> Decimal | None:
    step = Decimal(1).scaleb(-places)
    factors = [Decimal("1.3"), Decimal("0.7"), Decimal("1.5"), Decimal("0.5"), Decimal("2")]
    rng.shuffle(factors)
    candidates = [(value * f).quantize(step) for f in factors] + [value + step * k for k in (3, 7, 11)]
    for candidate in candidates:
        if (
            candidate != value
            and candidate > 0
            and candidate.normalize() not in {a.normalize() for a in avoid}
        ):
            return candidate
    return None


def _plant_value(pl: Planting) -> Answer | None:
    slots = pl.slots("value")
    if not slots:
        return None
    d, p = pl.rng.choice(slots)
    part = pl.answer.drafts[d].parts[p]
    raw = part.text.lstrip("<>=≤≥")
    avoid = pl.numbers(pl.answer.drafts[d].facts) | pl.numbers(f.id for f in pl.context.facts)
    new = _other_number(Decimal(raw), _decimals(raw), avoid, pl.rng)
    if new is None:
        return None
    text = part.text[: len(part.text) - len(raw)] + str(new)
    return pl.changed(d, p, replace(part, text=text), f"{part.text} -> {text}", "value")


def _plant_unit(pl: Planting) -> Answer | None:
    slots = pl.slots("unit")
    if not slots:
        return None
    d, p = pl.rng.choice(slots)
    part = pl.answer.drafts[d].parts[p]
    new = _UNIT_SWAP.get(part.text.lower().replace("µ", "u"), "mg/dL")
    if new.lower() == part.text.lower():
        new = "mmol/L"
    return pl.changed(d, p, replace(part, text=new), f"{part.text} -> {new}", "unit")


def _plant_date(pl: Planting) -> Answer | None:
    slots = pl.slots("date")
    if not slots:
        return None
    d, p = pl.rng.choice(slots)
    part = pl.answer.drafts[d].parts[p]
    known = {
        m for fid in pl.answer.drafts[d].facts for m in re.findall(r"\d{4}-\d{2}-\d{2}", pl.fact(fid).text)
    }
    day = date.fromisoformat(part.data)
    for shift in pl.rng.sample([1, -1, 2, -2, 3, -3, 7], 7):
        moved = (day + timedelta(days=shift)).isoformat()
        if moved not in known:
            text = _write_date(moved, part.fmt)
            return pl.changed(d, p, replace(part, text=text, data=moved), f"{part.text} -> {text}", "date")
    return None


def _plant_flag(pl: Planting) -> Answer | None:
    slots = [(d, p) for d, p in pl.slots("flag") if pl.answer.drafts[d].parts[p].data in _FLIP]
    if not slots:
        return None
    d, p = pl.rng.choice(slots)
    draft = pl.answer.drafts[d]
    target = draft.parts[p]
    flipped = _FLIP[target.data]
    parts = tuple(
        replace(part, text=_FLAG_VOCAB[part.fmt][flipped], data=flipped)
        if part.slot == "flag" and part.fact == target.fact
        else part
        for part in draft.parts
    )
    note = f"{target.text} -> {_FLAG_VOCAB[target.fmt][flipped]}"
    return pl.with_draft(d, replace(draft, parts=parts), note, "flag")


_EN_CUE = re.compile(r"\b(?:no|not|without)\s+", re.I)
_ZH_CUE = re.compile(r"未见|未发现|未检出|无")
_SWAP_RESULT = {"negative": "positive", "positive": "negative", "detected": "not detected",
                "not detected": "detected", "阴性": "阳性", "阳性": "阴性", "检出": "未检出",
                "未检出": "检出"}  # fmt: skip


def _plant_negation(pl: Planting) -> Answer | None:
    """Drop a negation cue, or put one before an affirmed finding ("no"/"未见")."""
    options: list[tuple[str, int, int]] = []
    for d, p in pl.slots("finding"):
        text = pl.answer.drafts[d].parts[p].text
        cue = _ZH_CUE if _CJK.search(text) else _EN_CUE
        mode = "swap" if text.lower() in _SWAP_RESULT else "drop" if cue.search(text) else "insert"
        options.append((mode, d, p))
    if not options:
        return None
    modes = sorted({m for m, _, _ in options})
    mode = pl.rng.choice(modes)
    d, p = pl.rng.choice([(d, p) for m, d, p in options if m == mode])
    part = pl.answer.drafts[d].parts[p]
    text = part.text
    zh = bool(_CJK.search(text))
    if mode == "swap":  # "negative" -> "positive": the result's polarity, said in its own word
        new = _SWAP_RESULT[text.lower()]
    elif mode == "drop":
        found = (_ZH_CUE if zh else _EN_CUE).search(text)
        assert found is not None
        new = text[: found.start()] + text[found.end() :]
        if found.start() == 0 and not zh:
            new = _cap(new)
    elif zh:
        new = "未见" + text
    else:
        new = ("No " if p == 0 or pl.answer.drafts[d].parts[p - 1].text.endswith(". ") else "no ") + (
            text[0].lower() + text[1:] if text[1:2].islower() else text
        )
    return pl.changed(d, p, replace(part, text=new), f"{mode}: {text} -> {new}", "negation")


def _plant_wrong_citation(pl: Planting) -> Answer | None:
    options = [(d, fid) for d, draft in enumerate(pl.answer.drafts) for fid in draft.facts]
    pl.rng.shuffle(options)
    for d, fid in options:
        draft = pl.answer.drafts[d]
        old = pl.fact(fid)
        # A fact that says every word of the sentence too would make the "wrong" citation a
        # right one (two results worded alike): not an error, so never planted as one.
        others = [
            f
            for f in pl.context.facts
            if f.id not in draft.facts and f.text != old.text and not lexically_supported(draft.text, f)
        ]
        same_type = [f for f in others if f.resource_type == old.resource_type]
        if not others:
            continue
        new = pl.rng.choice(same_type or others)
        facts = tuple(new.id if f == fid else f for f in draft.facts)
        return pl.with_draft(d, replace(draft, facts=facts), f"{fid} -> {new.id}", "wrong-citation")
    return None


def _plant_unknown_citation(pl: Planting) -> Answer | None:
    ids = {f.id for f in pl.context.facts}
    unknown = next(f"F{n}" for n in range(99, 10_000) if f"F{n}" not in ids)
    d = pl.rng.randrange(len(pl.answer.drafts))
    draft = pl.answer.drafts[d]
    k = pl.rng.randrange(len(draft.facts))
    facts = (*draft.facts[:k], unknown, *draft.facts[k + 1 :])
    return pl.with_draft(d, replace(draft, facts=facts), f"{draft.facts[k]} -> {unknown}", "unknown-citation")


def _plant_no_citation(pl: Planting) -> Answer | None:
    d = pl.rng.randrange(len(pl.answer.drafts))
    draft = pl.answer.drafts[d]
    return pl.with_draft(d, replace(draft, facts=()), f"sentence {d + 1} cites nothing", "no-citation")


def _before_end(draft: Draft, addition: Part) -> Draft:
    last = draft.parts[-1]
    if last.text in (".", "。"):
        return replace(draft, parts=(*draft.parts[:-1], addition, last))
    stripped = last.text.rstrip(".。")
    end = last.text[len(stripped) :]
    return replace(draft, parts=(*draft.parts[:-1], replace(last, text=stripped), addition, Part(end)))


def _plant_extra_number(pl: Planting) -> Answer | None:
    avoid = pl.numbers(f.id for f in pl.context.facts)
    slots = pl.slots("unit") or pl.slots("value")
    if slots:
        d, p = pl.rng.choice(slots)
        part = pl.answer.drafts[d].parts[p]
        draft = pl.answer.drafts[d]
        unit = part.text if part.slot == "unit" else ""
        value_part = next(x for x in draft.parts if x.slot == "value" and x.fact == part.fact)
        raw = value_part.text.lstrip("<>=≤≥")
        extra = _other_number(Decimal(raw), _decimals(raw), avoid, pl.rng)
        if extra is None:
            return None
        said = f"{extra} {unit}".strip()
        added = Part(f" and {said}" if pl.language == "en" else f"及{said}")
        parts = (*draft.parts[: p + 1], added, *draft.parts[p + 1 :])
        return pl.with_draft(d, replace(draft, parts=parts), f"added {said}", "extra-number")
    extra = _other_number(Decimal("7.2"), 1, avoid, pl.rng)
    d = pl.rng.randrange(len(pl.answer.drafts))
    added = Part(f" ({extra} mm)" if pl.language == "en" else f"（{extra} mm）")
    return pl.with_draft(d, _before_end(pl.answer.drafts[d], added), f"added {extra} mm", "extra-number")


def _plant_identifier(pl: Planting) -> Answer | None:
    d = pl.rng.randrange(len(pl.answer.drafts))
    form = pl.rng.choice(_IDENTIFIERS[pl.language])
    return pl.with_draft(
        d, _before_end(pl.answer.drafts[d], Part(form)), f"added {form.strip()}", "identifier"
    )


def _plant_omission(pl: Planting) -> Answer | None:
    abnormal = [f for f in pl.context.facts if f.abnormal]
    if not abnormal:
        return None
    fact = pl.rng.choice(abnormal)
    drafts = tuple(d for d in pl.answer.drafts if fact.id not in d.facts)
    if not drafts:
        return None
    return replace(
        pl.answer, drafts=drafts, planted="omission", note=f"dropped the sentence(s) citing {fact.id}"
    )


def _plant_diagnosis(pl: Planting) -> Answer | None:
    every = {t for f in pl.context.facts for t in read_claims(f.text).terms}
    texts = " ".join(f.text.lower() for f in pl.context.facts)
    fresh = [
        dx
        for dx in _DIAGNOSES[pl.language]
        if dx.lower() not in texts and not set(read_claims(dx).terms) & every
    ]
    if not fresh:
        return None
    dx = pl.rng.choice(fresh)
    form = pl.rng.choice(_DIAGNOSIS_FORMS[pl.language]).format(dx)
    d = pl.rng.randrange(len(pl.answer.drafts))
    return pl.with_draft(
        d, _before_end(pl.answer.drafts[d], Part(form)), f"added{form}", "invented-diagnosis"
    )


PLANTERS: dict[str, Callable[[Planting], Answer | None]] = {
    "value": _plant_value,
    "unit": _plant_unit,
    "date": _plant_date,
    "flag": _plant_flag,
    "negation": _plant_negation,
    "wrong-citation": _plant_wrong_citation,
    "unknown-citation": _plant_unknown_citation,
    "no-citation": _plant_no_citation,
    "extra-number": _plant_extra_number,
    "identifier": _plant_identifier,
    "omission": _plant_omission,
    "invented-diagnosis": _plant_diagnosis,
}


def plant(error: str, answer: Answer, context: Context, seed: int = 0) -> Answer | None:
    """``answer`` with one error of type ``error``; None when the answer offers no place
    for it (no value to change, no abnormal fact to omit, ...)."""
    if not answer.drafts:
        return None
    rng = random.Random(f"{seed}/{context.name}/{answer.style}/{error}")
    return PLANTERS[error](Planting(answer, context, rng))


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    answers: int = 0
    refused: int = 0  # faithful: wrongly refused; planted: caught
    own_check: int = 0  # planted: refused by the check meant for the error type
    codes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # faithful: each refusal's message
    modes: Counter[str] = field(default_factory=Counter)  # negation: drop / insert / swap
    supported: int = 0  # wrong citation, missed: the cited fact says every word of the sentence too
    examples: list[dict[str, Any]] = field(default_factory=list)
    _shown: set[str] = field(default_factory=set)

    def example(self, limit: int, key: str, example: dict[str, Any]) -> None:
        """Keep up to ``limit`` examples, one per distinct reason."""
        if len(self.examples) < limit and key not in self._shown:
            self._shown.add(key)
            self.examples.append(example)

    @property
    def rate(self) -> float:
        return self.refused / self.answers if self.answers else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "refused": self.refused,
            "own_check": self.own_check,
            "rate": round(self.rate, 6),
            "codes": dict(self.codes.most_common()),
            **({"reasons": dict(self.reasons.most_common())} if self.reasons else {}),
            **({"modes": dict(self.modes)} if self.modes else {}),
            **({"missed_lexically_supported": self.supported} if self.supported else {}),
            "examples": self.examples,
        }


@dataclass
class Evaluation:
    contexts: Counter[str] = field(default_factory=Counter)  # language -> contexts
    faithful: dict[str, dict[str, Tally]] = field(default_factory=dict)  # language -> style -> tally
    planted: dict[str, dict[str, Tally]] = field(default_factory=dict)  # language -> error type -> tally
    not_planted: Counter[str] = field(default_factory=Counter)  # "<language> <type>": no place for it
    times_ms: list[float] = field(default_factory=list)  # one verify() per summary
    max_facts: int = 0

    def faithful_total(self, language: str | None = None) -> Tally:
        total = Tally()
        for lang, styles in self.faithful.items():
            if language in (None, lang):
                for t in styles.values():
                    total.answers += t.answers
                    total.refused += t.refused
        return total

    def planted_total(self, error: str) -> Tally:
        total = Tally()
        for types in self.planted.values():
            t = types.get(error, Tally())
            total.answers += t.answers
            total.refused += t.refused
            total.own_check += t.own_check
        return total

    def percentile(self, q: float) -> float:
        if not self.times_ms:
            return 0.0
        ordered = sorted(self.times_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _example(context: Context, answer: Answer, report: Report) -> dict[str, Any]:
    """The failing (or missed) sentences with the lines of the facts they cite."""
    lines = {f.id: f.line for f in context.facts}
    failing = {f.sentence for f in report.failures}
    shown = [
        {"sentence": d.text, "facts": [lines.get(i, f"[{i}] (unknown)") for i in d.facts]}
        for n, d in enumerate(answer.drafts, start=1)
        if n in failing or (not failing and n - 1 == answer.where)
    ]
    return {
        "context": context.name,
        "style": answer.style,
        "planted": answer.note,
        "failures": report.messages,
        "sentences": shown[:4],
    }


def _reason(detail: str, code: str) -> str:
    # Numbers and dates differ from answer to answer; the words are what the reason is.
    return f"{code}: {re.sub(r'[0-9][0-9.:/-]*', '#', detail)}"


def _timed(answer: Answer, context: Context, evaluation: Evaluation) -> Report:
    sentences = answer.sentences()
    start = time.perf_counter()
    report = verify(sentences, context.facts)
    evaluation.times_ms.append((time.perf_counter() - start) * 1000)
    return report


def evaluate(contexts: Sequence[Context], *, seed: int = 0, examples: int = 5) -> Evaluation:
    evaluation = Evaluation()
    for n, context in enumerate(contexts):
        lang = context.language
        evaluation.contexts[lang] += 1
        evaluation.max_facts = max(evaluation.max_facts, len(context.facts))
        faithful = faithful_answers(context, seed)
        accepted: list[Answer] = []
        for answer in faithful:
            report = _timed(answer, context, evaluation)
            tally = evaluation.faithful.setdefault(lang, {}).setdefault(answer.style, Tally())
            tally.answers += 1
            if report.ok:
                accepted.append(answer)
                continue
            tally.refused += 1
            tally.codes.update(report.codes)
            reasons = [_reason(f.detail, f.code) for f in report.failures]
            tally.reasons.update(reasons)
            tally.example(examples, reasons[0], _example(context, answer, report))
        # Errors are planted into answers the verifier accepted, so a refusal is the error's.
        for k, error in enumerate(ERROR_TYPES):
            planted = None
            for j in range(len(accepted)):
                candidate = accepted[(n + k + j) % len(accepted)]
                planted = plant(error, candidate, context, seed)
                if planted is not None:
                    break
            if planted is None:
                evaluation.not_planted[f"{lang} {error}"] += 1
                continue
            report = _timed(planted, context, evaluation)
            tally = evaluation.planted.setdefault(lang, {}).setdefault(error, Tally())
            tally.answers += 1
            if error == "negation":
                tally.modes[planted.note.split(":")[0]] += 1
            if report.ok:
                if error == "wrong-citation" and planted.where >= 0:
                    draft = planted.drafts[planted.where]
                    tally.supported += all(
                        lexically_supported(draft.text, f) for f in context.facts if f.id in draft.facts
                    )
                tally.example(examples, planted.note, _example(context, planted, report))
                continue
            tally.refused += 1
            tally.codes.update(report.codes)
            tally.own_check += EXPECTED_CODE[error] in report.codes
    return evaluation


_WORD = re.compile(r"[a-z]+|\d+(?:\.\d+)?|[\u4e00-\u9fff]")
_FUNCTION_WORDS = frozenset(
    {"a", "an", "the", "of", "on", "in", "at", "to", "was", "were", "is", "are", "and", "or", "with",
     "for", "from", "by", "as", "为", "的", "于", "示", "测", "得"}
)  # fmt: skip


def lexically_supported(sentence: str, fact: Fact) -> bool:
    """Does the fact's line hold every word and number of the sentence (a wrong citation
    that no lexical check can tell from a right one)? Told here with plain word sets, not
    with the verifier's reader."""
    words = set(_WORD.findall(sentence.lower())) - _FUNCTION_WORDS
    return words <= set(_WORD.findall(fact.text.lower()))


# ---------------------------------------------------------------------------------------
# The real model: SmolLM2 served by llama-cpp-python, or any OpenAI-compatible server
# ---------------------------------------------------------------------------------------


@dataclass
class ModelRun:
    model: str = ""
    contexts: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # model errors and invalid answers, by code
    verified_first: int = 0
    verified_retry: int = 0
    codes_first: Counter[str] = field(default_factory=Counter)
    codes_final: Counter[str] = field(default_factory=Counter)
    sentences: int = 0
    failing_sentences: int = 0
    identifier_answers: int = 0  # answers the PHI guard would stop (sandbox.guard)
    seconds: list[float] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    skipped: str = ""
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        if self.skipped:
            return {"skipped": self.skipped}
        return {
            "model": self.model,
            "contexts": self.contexts,
            "verified_first_answer": self.verified_first,
            "verified_after_retry": self.verified_retry,
            "errors": dict(self.errors),
            "failure_codes_first_answer": dict(self.codes_first.most_common()),
            "failure_codes_final": dict(self.codes_final.most_common()),
            "sentences": self.sentences,
            "failing_sentences": self.failing_sentences,
            "answers_with_identifier_shapes": self.identifier_answers,
            "seconds_per_answer_p50": round(statistics.median(self.seconds), 2) if self.seconds else None,
            "examples": self.examples,
            **({"note": self.note} if self.note else {}),
        }


def _model_contexts(contexts: Sequence[Context], count: int) -> list[Context]:
    """Real-model contexts: ones with abnormal facts and at most 20 facts (the small model's
    2,048-token window), English and Chinese in turn, lab and imaging reports first."""
    fit = [c for c in contexts if any(f.abnormal for f in c.facts) and len(c.facts) <= 20]
    order = {"lab-report": 0, "imaging-report": 1, "digest": 2, "discharge": 3}
    fit.sort(key=lambda c: (order.get(c.kind, 9), c.name))
    by_language = [[c for c in fit if c.language == lang] for lang in LANGUAGES]
    mixed = [c for pair in zip(*by_language, strict=False) for c in pair]
    return mixed[:count]


def run_model(model: Any, contexts: Sequence[Context], examples: int = 5) -> ModelRun:
    """Each context through ``model`` (a SummaryModel) as the runner does it: prompt,
    answer, parse, verify; asked once more with the failures named."""
    from sandbox import guard
    from sandbox.answer import AnswerInvalid, parse_answer
    from sandbox.models import ModelError
    from sandbox.prompt import build_prompt

    run = ModelRun(model=str(getattr(model, "name", "")), contexts=len(contexts))
    for context in contexts:
        template = TEMPLATES[context.kind]
        prompt = build_prompt(template.name, context.kind, context.language, context.facts)
        for attempt in (1, 2):
            start = time.perf_counter()
            try:
                reply = model.answer(prompt)
            except ModelError as exc:
                run.errors[exc.code] += 1
                break
            finally:
                run.seconds.append(time.perf_counter() - start)
            run.identifier_answers += bool(guard.scan(reply.content))
            try:
                sentences = parse_answer(reply.content)
            except AnswerInvalid as exc:
                problems, codes, report = [str(exc)], {exc.code}, None
            else:
                report = verify(sentences, context.facts)
                problems, codes = report.messages, report.codes
                run.sentences += len(sentences)
                run.failing_sentences += len({f.sentence for f in report.failures if f.sentence})
            (run.codes_first if attempt == 1 else run.codes_final).update(codes)
            if not problems:
                if attempt == 1:
                    run.verified_first += 1
                else:
                    run.verified_retry += 1
                break
            if report is not None and len(run.examples) < examples:
                answer = Answer("model", tuple(Draft((Part(s.text),), s.facts) for s in sentences))
                run.examples.append(_example(context, answer, report))
            if attempt == 1:
                prompt = prompt.with_feedback(reply.content, problems[:20])
    return run


def real_model(contexts: Sequence[Context], count: int, base_url: str | None, name: str | None) -> ModelRun:
    """``count`` contexts through SmolLM2 (started here) or through the server at ``base_url``."""
    import importlib.util

    if importlib.util.find_spec("sandbox.llm") is None:
        return ModelRun(skipped="sandbox/llm.py is not there yet: no model client")
    from sandbox.llm import ModelConfig, OpenAIChatModel

    chosen = _model_contexts(contexts, count)
    if base_url:
        config = ModelConfig(base_url=base_url, name=name or "default", max_tokens=1024, timeout_s=300)
        with OpenAIChatModel(config) as model:
            return run_model(model, chosen)
    if not Path(__file__).resolve().parents[1].joinpath("tests/fixtures/llm_server.py").is_file():
        return ModelRun(skipped="tests/fixtures/llm_server.py is not there yet: no SmolLM2 server")
    if importlib.util.find_spec("llama_cpp") is None:
        return ModelRun(
            skipped="llama-cpp-python is not installed (make install builds it): no SmolLM2 server"
        )
    from tests.fixtures.llm_server import running_llm_server

    try:
        with running_llm_server() as server:
            config = ModelConfig(base_url=server.base_url, name=server.model, max_tokens=512, timeout_s=300)
            with OpenAIChatModel(config) as model:
                run = run_model(model, chosen)
            if run.errors and _exited(server.pid):
                run.note = "the model server process exited while answering (it crashed)"
            return run
    except RuntimeError as exc:  # the model file is missing, or the server did not start
        return ModelRun(skipped=str(exc).splitlines()[0])


def _exited(pid: int, wait_s: float = 5.0) -> bool:
    """Has the server died (a zombie until its parent reaps it)? Read, not waited for: the
    server's context manager reaps it. A crashing process takes a moment to end."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

_NAMES = {"en": "English", "zh": "Chinese"}


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:6.2f}%" if whole else "      -"


def acceptance(evaluation: Evaluation) -> dict[str, Any]:
    caught = {
        f"{lang} {error}": round(t.rate, 6)
        for lang, types in evaluation.planted.items()
        for error, t in types.items()
        if error in DETERMINISTIC
    }
    faithful = evaluation.faithful_total()
    p95 = evaluation.percentile(0.95)
    return {
        "caught_each_deterministic_type_ge_99pct": all(rate >= 0.99 for rate in caught.values()),
        "below_99pct": {k: v for k, v in caught.items() if v < 0.99},
        "faithful_refused_le_1pct": faithful.rate <= 0.01,
        "faithful_refused": round(faithful.rate, 6),
        "p95_verify_le_50ms": p95 <= 50.0,
        "p95_verify_ms": round(p95, 3),
    }


def print_report(
    evaluation: Evaluation, notes: Notes, elapsed: float, run: ModelRun | None, out: Any = sys.stdout
) -> None:
    def say(line: str = "") -> None:
        print(line, file=out)

    total = sum(evaluation.contexts.values())
    say("summary verifier (sandbox.verifier), injected errors: issue 18")
    sources = ", ".join(f"{k} {v}" for k, v in sorted(notes.messages.items()))
    languages = ", ".join(f"{k} {v}" for k, v in sorted(evaluation.contexts.items()))
    messages = sum(notes.messages.values())
    say(f"  {total} contexts ({languages}) from {messages} de-identified messages ({sources})")
    say(f"  corpus: {notes.corpus}")
    say(f"  {notes.duplicates} fact sets skipped as the same as another template's; up to "
        f"{evaluation.max_facts} facts per context")  # fmt: skip
    for failure in notes.failures:
        say(f"  not converted: {failure}")
    for error, count in notes.template_errors.items():
        say(f"  template failed ({count} patient-language pairs): {error}")
    for lang in LANGUAGES:
        if lang not in evaluation.faithful:
            continue
        say()
        say(f"{_NAMES[lang]} ({lang}): {evaluation.contexts[lang]} contexts")
        say("  faithful answers       answers  refused     rate   refusing checks")
        all_styles = Tally()
        for style, t in evaluation.faithful[lang].items():
            all_styles.answers += t.answers
            all_styles.refused += t.refused
            codes = " ".join(f"{c}:{n}" for c, n in t.codes.most_common())
            say(f"    {style:20} {t.answers:7d} {t.refused:8d} {_pct(t.refused, t.answers)}   {codes}")
        say(f"    {'all styles':20} {all_styles.answers:7d} {all_styles.refused:8d} "
            f"{_pct(all_styles.refused, all_styles.answers)}")  # fmt: skip
        say("  planted error          planted   caught     rate   by its check       checks that fired")
        for error in ERROR_TYPES:
            planted = evaluation.planted.get(lang, {}).get(error)
            if planted is None:
                say(f"    {error:20}       0  (no place for it)")
                continue
            codes = " ".join(f"{c}:{n}" for c, n in planted.codes.most_common())
            mark = "" if error in DETERMINISTIC else " (figure only)"
            rate = _pct(planted.refused, planted.answers)
            say(f"    {error:20} {planted.answers:7d} {planted.refused:8d} {rate}   "
                f"{planted.own_check:5d} {EXPECTED_CODE[error]:10} {codes}{mark}")  # fmt: skip
            if planted.modes:
                say(f"    {'':20} {' '.join(f'{m}:{n}' for m, n in sorted(planted.modes.items()))}")
            if planted.supported:
                say(f"    {'':20} missed where the cited fact says every word too: {planted.supported}")
    say()
    times = evaluation.times_ms
    p50, p95 = evaluation.percentile(0.5), evaluation.percentile(0.95)
    say(f"verify() per summary, one process: {len(times)} summaries, p50 {p50:.2f} ms, "
        f"p95 {p95:.2f} ms, max {max(times, default=0):.2f} ms")  # fmt: skip
    if run is not None:
        say()
        if run.skipped:
            say(f"real model: skipped: {run.skipped}")
        else:
            errors = dict(run.errors) or "none"
            say(f"real model {run.model}: {run.contexts} contexts, verified on the first answer "
                f"{run.verified_first}, after one retry {run.verified_retry}; errors {errors}")  # fmt: skip
            seconds = statistics.median(run.seconds or [0])
            say(f"  sentences {run.sentences}, failing {run.failing_sentences}; answers with identifier "
                f"shapes {run.identifier_answers}; p50 {seconds:.1f} s an answer")  # fmt: skip
            say(f"  failure codes, first answer: {dict(run.codes_first.most_common())}")
            say(f"  failure codes, after retry : {dict(run.codes_final.most_common())}")
            if run.note:
                say(f"  note: {run.note}")
    verdict = acceptance(evaluation)

    def met(key: str) -> str:
        return "met" if verdict[key] else "NOT met"

    below = ", ".join(f"{k} {100 * v:.1f}%" for k, v in verdict["below_99pct"].items())
    say()
    say("acceptance (issue 18):")
    say(f"  >= 99% caught, every deterministic type: {met('caught_each_deterministic_type_ge_99pct')}"
        + (f" (below: {below})" if below else ""))  # fmt: skip
    say(f"  <= 1% of faithful answers refused     : {met('faithful_refused_le_1pct')}"
        f" ({100 * verdict['faithful_refused']:.2f}%)")  # fmt: skip
    p95_ms = verdict["p95_verify_ms"]
    say(f"  p95 verify <= 50 ms                   : {met('p95_verify_le_50ms')} ({p95_ms:.2f} ms)")
    say(f"done in {elapsed:.1f} s")


def as_json(evaluation: Evaluation, notes: Notes, elapsed: float, run: ModelRun | None) -> dict[str, Any]:
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "contexts": dict(evaluation.contexts),
        "messages": dict(notes.messages),
        "not_converted": notes.failures,
        "template_errors": dict(notes.template_errors),
        "faithful": {
            lang: {style: t.as_json() for style, t in styles.items()}
            for lang, styles in evaluation.faithful.items()
        },
        "planted": {
            lang: {error: t.as_json() for error, t in types.items()}
            for lang, types in evaluation.planted.items()
        },
        "not_planted": dict(evaluation.not_planted),
        "verify_ms": {
            "summaries": len(evaluation.times_ms),
            "p50": round(evaluation.percentile(0.5), 3),
            "p95": round(evaluation.percentile(0.95), 3),
            "max": round(max(evaluation.times_ms, default=0.0), 3),
        },
        "real_model": run.as_json() if run is not None else None,
        "acceptance": acceptance(evaluation),
        "seconds": round(elapsed, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N contexts")
    parser.add_argument("--patients", type=int, default=30, help="synthetic hospital patients (default 30)")
    parser.add_argument("--no-corpus", action="store_true", help="synthetic contexts only")
    parser.add_argument("--examples", type=int, default=5, help="examples kept per style and error type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures and examples here")
    parser.add_argument("--real-model", type=int, default=0, metavar="N", help="N contexts through SmolLM2")
    parser.add_argument("--model-url", help="with --real-model: this OpenAI-compatible server instead")
    parser.add_argument("--model-name", help="with --model-url: the model to ask for")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    contexts, notes = build_contexts(corpus=not args.no_corpus, hospital_patients=args.patients)
    if args.limit:
        contexts = contexts[: args.limit]
    evaluation = evaluate(contexts, seed=args.seed, examples=args.examples)
    elapsed = time.perf_counter() - start
    run = real_model(contexts, args.real_model, args.model_url, args.model_name) if args.real_model else None
    print_report(evaluation, notes, elapsed, run)
    if args.json:
        data = as_json(evaluation, notes, elapsed, run)
        args.json.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"figures and examples written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
