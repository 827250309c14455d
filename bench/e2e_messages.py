"""The messages of bench/e2e.py: ORU^R01 with 10 OBX, 1 in 10 an ADT^A01/A08, for a pool of
synthetic patients (sidecar.hospital), every message a pure function of its sequence number.

The 10th OBX of every ORU carries the message's sequence number as its numeric value under
the local code ``BENCH-SEQ``: de-identification keeps numeric values verbatim, so an
Observation event read from RabbitMQ names the message it came from (``seq_of_event``).
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sidecar.hospital import SyntheticPatient, _msh, _pid, _pv1, make_patients

SEQ_CODE = "BENCH-SEQ"

# (LOINC, display, unit, low, high, decimals): nine labs, then the sequence number.
LABS9 = [
    ("718-7", "Hemoglobin", "g/dL", 12.0, 17.5, 1),
    ("6690-2", "Leukocytes", "10*3/uL", 4.0, 11.0, 1),
    ("777-3", "Platelets", "10*3/uL", 150, 400, 0),
    ("2951-2", "Sodium", "mmol/L", 135, 145, 0),
    ("2823-3", "Potassium", "mmol/L", 3.5, 5.1, 1),
    ("2160-0", "Creatinine", "mg/dL", 0.6, 1.3, 2),
    ("2345-7", "Glucose", "mg/dL", 70, 99, 0),
    ("2075-0", "Chloride", "mmol/L", 98, 107, 0),
    ("2028-9", "CO2", "mmol/L", 22, 29, 0),
]
START = datetime(2026, 3, 1, 8)


@lru_cache(maxsize=4)
def patients(count: int) -> list[SyntheticPatient]:
    return make_patients(count)


def is_adt(seq: int) -> bool:
    return seq % 10 == 9


def control_id(run: str, seq: int) -> str:
    """MSH-10: unique per run (the run tag is random), and it gives the sequence number back."""
    return f"{run}-{seq}"


def seq_of_control_id(value: str) -> int:
    return int(value.rsplit("-", 1)[1])


def message(seq: int, run: str, patient_count: int = 500) -> bytes:
    index = seq % patient_count
    p = patients(patient_count)[index]
    when = START + timedelta(seconds=seq % 2_000_000)
    cid = control_id(run, seq)
    if is_adt(seq):
        return _adt(p, f"V{index:05d}", when, cid, "A01" if (seq // 10) % 2 == 0 else "A08")
    return _oru(p, f"ORD{run}{seq:08d}", when, cid, seq)


def _adt(p: SyntheticPatient, visit: str, when: datetime, cid: str, event: str) -> bytes:
    segments = [
        _msh(f"ADT^{event}^ADT_A01", cid, when, "HIS"),
        f"EVN|{event}|{when:%Y%m%d%H%M%S}+0800",
        _pid(p),
        _pv1(visit, when),
    ]
    return ("\r".join(segments) + "\r").encode()


def _oru(p: SyntheticPatient, order: str, when: datetime, cid: str, seq: int) -> bytes:
    rng = random.Random(seq)
    at = f"{when:%Y%m%d%H%M%S}+0800"
    segments = [
        _msh("ORU^R01^ORU_R01", cid, when, "LIS"),
        _pid(p),
        f"OBR|1|{order}-P|{order}|CHEM10^Panel^L|||{at}|||||||||||||||{at}|||F",
    ]
    for i, (code, name, unit, low, high, decimals) in enumerate(LABS9, 1):
        value = round(rng.uniform(low - (high - low) * 0.6, high + (high - low) * 0.6), decimals)
        flag = "H" if value > high else "L" if value < low else "N"
        segments.append(
            f"OBX|{i}|NM|{code}^{name}^LN||{value:.{decimals}f}|{unit}|{low}-{high}|{flag}|||F|||{at}"
        )
    segments.append(f"OBX|10|NM|{SEQ_CODE}^Bench message sequence number^L||{seq}|{{count}}||N|||F|||{at}")
    return ("\r".join(segments) + "\r").encode()


def seq_of_event(body: bytes) -> int | None:
    """The sequence number an Observation event carries, or None for the other nine OBX
    (checked on the bytes first: a JSON parse of every event would cost the subscriber
    more than the sidecar spends publishing it)."""
    if SEQ_CODE.encode() not in body:
        return None
    event: dict[str, Any] = json.loads(body)
    quantity = event.get("data", {}).get("valueQuantity", {})
    value = quantity.get("value")
    return int(value) if isinstance(value, int | float) else None
