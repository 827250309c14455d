"""A synthetic hospital for the demo and tests: made-up patients, ADT and ORU messages, and
CT images of the same patients for its PACS.

Everything here is invented (seeded random), so it can be printed, committed and sent
anywhere. Some patients have Chinese names and addresses, and some lab notes mention the
patient's own name and MRN, so de-identification has something real to do.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

AUTHORITY = "DEMO-HOSP"  # PID-3.4 and (0010,0021) Issuer of Patient ID: one patient, one pseudonym

FAMILY_EN = ["Smith", "Johnson", "Garcia", "Miller", "Davis", "Wilson", "Taylor", "Clark", "Lewis", "Walker"]
GIVEN_EN = ["James", "Mary", "Robert", "Linda", "Michael", "Susan", "David", "Karen", "Thomas", "Nancy"]
FAMILY_ZH = ["王", "李", "张", "刘", "陈", "杨", "欧阳", "赵", "黄", "周"]
GIVEN_ZH = ["伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军"]
STREETS_ZH = ["人民路", "解放路", "中山路", "建设路"]

# (LOINC, display, unit, low, high, decimals)
LABS = [
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5, 1),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.0, 11.0, 1),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400, 0),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 135, 145, 0),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 1),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, 2),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 0),
]


@dataclass(frozen=True)
class SyntheticPatient:
    mrn: str
    family: str
    given: str
    birth_date: str  # YYYYMMDD
    sex: str
    street: str
    city: str
    phone: str
    chinese: bool


def make_patients(count: int, seed: int = 7) -> list[SyntheticPatient]:
    rng = random.Random(seed)
    patients = []
    for i in range(count):
        chinese = i % 3 == 2
        born = datetime(1940, 1, 1) + timedelta(days=rng.randrange(0, 365 * 80))
        if chinese:
            family, given = rng.choice(FAMILY_ZH), rng.choice(GIVEN_ZH)
            street = f"{rng.choice(STREETS_ZH)}{rng.randrange(1, 300)}号"
            city, phone = "杭州市", f"13{rng.randrange(0, 10)}{rng.randrange(10**7, 10**8)}"
        else:
            family, given = rng.choice(FAMILY_EN), rng.choice(GIVEN_EN)
            street = f"{rng.randrange(10, 9999)} {rng.choice(['Oak', 'Elm', 'Main', 'Pine'])} St"
            city, phone = "Springfield", f"(555){rng.randrange(200, 999)}-{rng.randrange(1000, 9999)}"
        patients.append(
            SyntheticPatient(
                mrn=f"MRN{100000 + i * 7919 % 900000:06d}",
                family=family,
                given=given,
                birth_date=born.strftime("%Y%m%d"),
                sex=rng.choice("MF"),
                street=street,
                city=city,
                phone=phone,
                chinese=chinese,
            )
        )
    return patients


def _msh(kind: str, control_id: str, when: datetime, sender: str) -> str:
    return f"MSH|^~\\&|{sender}|DEMO-HOSP|SIDECAR|DEMO-HOSP|{when:%Y%m%d%H%M%S}+0800||{kind}|{control_id}|P|2.5.1||||||UNICODE UTF-8"


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment from {field number: value}: positions by number, never by counting pipes."""
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join([name, *values])


def _pv1(visit: str, admitted: datetime, discharged: datetime | None = None) -> str:
    fields = {
        1: "1",
        2: "I",
        3: "WARD3^301^1^DEMO-HOSP",
        7: "1234^Attending^Alice",
        10: "MED",
        19: f"{visit}^^^DEMO-HOSP^VN",
        44: f"{admitted:%Y%m%d%H%M%S}+0800",
    }
    if discharged is not None:
        fields[45] = f"{discharged:%Y%m%d%H%M%S}+0800"
    return segment("PV1", fields)


def _pid(p: SyntheticPatient) -> str:
    return (
        f"PID|1||{p.mrn}^^^{AUTHORITY}^MR||{p.family}^{p.given}||{p.birth_date}|{p.sex}|||"
        f"{p.street}^^{p.city}^^310000^CHN||{p.phone}^PRN^PH"
    )


def admit(p: SyntheticPatient, visit: str, when: datetime, control_id: str) -> bytes:
    segments = [
        _msh("ADT^A01^ADT_A01", control_id, when, "HIS"),
        f"EVN|A01|{when:%Y%m%d%H%M%S}+0800",
        _pid(p),
        _pv1(visit, when),
    ]
    return ("\r".join(segments) + "\r").encode()


def discharge(p: SyntheticPatient, visit: str, admitted: datetime, when: datetime, control_id: str) -> bytes:
    segments = [
        _msh("ADT^A03^ADT_A03", control_id, when, "HIS"),
        f"EVN|A03|{when:%Y%m%d%H%M%S}+0800",
        _pid(p),
        _pv1(visit, admitted, when),
    ]
    return ("\r".join(segments) + "\r").encode()


def lab_result(p: SyntheticPatient, order: str, when: datetime, control_id: str, rng: random.Random) -> bytes:
    segments = [
        _msh("ORU^R01^ORU_R01", control_id, when, "LIS"),
        _pid(p),
        f"OBR|1|{order}-P|{order}|CBCCHEM^Blood panel^L|||{when:%Y%m%d%H%M%S}+0800|||||||||||||||"
        f"{when:%Y%m%d%H%M%S}+0800|||F",
    ]
    for i, (code, name, unit, low, high, decimals) in enumerate(LABS, start=1):
        spread = (high - low) * 0.6
        value = round(rng.uniform(low - spread, high + spread), decimals)
        flag = "H" if value > high else "L" if value < low else "N"
        segments.append(
            f"OBX|{i}|NM|{code}^{name}^LN||{value:.{decimals}f}|{unit}|{low}-{high}|{flag}|||F|||{when:%Y%m%d%H%M%S}+0800"
        )
    # Free text that names the patient: de-identification must scrub it.
    segments.append(f"NTE|1|L|Specimen for {p.given} {p.family} ({p.mrn}) received intact.")
    return ("\r".join(segments) + "\r").encode()


def feed(patients: list[SyntheticPatient], seed: int = 11) -> list[bytes]:
    """Per patient: admission, a lab result, and for every second patient a discharge,
    interleaved across patients as a real feed would be."""
    rng = random.Random(seed)
    start = datetime(2026, 3, 1, 8, 0)
    messages: list[tuple[datetime, bytes]] = []
    for n, p in enumerate(patients):
        admitted = start + timedelta(minutes=17 * n)
        visit = f"V{5000 + n}"
        messages.append((admitted, admit(p, visit, admitted, f"ADT{n:05d}A")))
        resulted = admitted + timedelta(hours=3)
        messages.append((resulted, lab_result(p, f"ORD{n:05d}", resulted, f"LAB{n:05d}", rng)))
        if n % 2 == 0:
            left = admitted + timedelta(days=2)
            messages.append((left, discharge(p, visit, admitted, left, f"ADT{n:05d}D")))
    messages.sort(key=lambda item: item[0])
    return [m for _, m in messages]


def imaging(patients: list[SyntheticPatient], count: int) -> list[Dataset]:
    """A synthetic PACS: a CT of each of the first ``count`` patients, built on pydicom's
    CT_small test image with the patient's identity, a new study and the admission's day."""
    path = get_testdata_file("CT_small.dcm")
    if not isinstance(path, str):
        raise FileNotFoundError("pydicom's CT_small.dcm test file is missing")
    template = pydicom.dcmread(path)
    studies: list[Dataset] = []
    start = datetime(2026, 3, 1, 8, 0)
    for n, p in enumerate(patients[:count]):
        ds = copy.deepcopy(template)
        # UTF-8 (ISO_IR 192): the hospital's names include Chinese ones, which the template's
        # default repertoire cannot carry.
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientID, ds.IssuerOfPatientID = p.mrn, AUTHORITY
        ds.PatientName = f"{p.family}^{p.given}"
        ds.PatientBirthDate, ds.PatientSex = p.birth_date, p.sex
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = f"{start + timedelta(minutes=17 * n, hours=1):%Y%m%d}"
        ds.AccessionNumber = f"IMG{n:05d}"
        ds.StudyDescription = f"CT chest {p.family}"
        studies.append(ds)
    return studies
