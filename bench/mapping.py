"""Mapping benchmark: parse + map messages/s on one core, beside hl7apy's ``parse_message``.

    .venv/bin/python -m bench.mapping [--seconds S] [--rounds N]

Messages: the canonical ADT^A01 (tests/fixtures/messages.py), a 16-segment ORU^R01 (corpus
file msfc__LAB-ORU-1 from ../shared, else the canonical ORU^R01) and the lab panel the throughput
target is stated for (ORU^R01 with 10 OBX: 11 resources; 500 patients' worth, taken in turn,
so the mapper's caches hit and miss as on a real feed). Ours is measured twice:
``map_message`` as shipped (every resource validated by fhir.resources), and with
``MappingOptions(validate=False)`` (tokenize + map only), since validation dominates. hl7apy
only parses (no FHIR), so the fair ratio is the one without validation; both are printed.
Single process, single thread; best of ``--rounds`` rounds. Time is this thread's CPU time
(``time.thread_time``), so other work on a shared machine does not count against any of them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from hl7apy.parser import parse_message

from mapping import MappingOptions, map_message
from tests.fixtures.messages import ADT_A01, ORU_R01

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "hl7"
_NO_VALIDATION = MappingOptions(validate=False)


def _oru() -> tuple[str, list[str]]:
    path = _SHARED / "msfc__LAB-ORU-1.hl7"
    if path.is_file():
        text = path.read_text(encoding="utf-8").lstrip("\ufeff")
        lines = [line for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if line.strip()]
        return f"ORU^R01 msfc__LAB-ORU-1 ({len(lines)} segments)", ["\r".join(lines)]
    return "ORU^R01 canonical", [ORU_R01]


_PANEL = (
    ("718-7", "Hemoglobin", "g/dL", "11.6", "12.0-17.5", "L"),
    ("6690-2", "Leukocytes", "10*3/uL", "8.2", "4.0-11.0", "N"),
    ("777-3", "Platelets", "10*3/uL", "203", "150-400", "N"),
    ("2951-2", "Sodium", "mmol/L", "142", "135-145", "N"),
    ("2823-3", "Potassium", "mmol/L", "4.7", "3.5-5.1", "N"),
    ("2160-0", "Creatinine", "mg/dL", "0.28", "0.6-1.3", "L"),
    ("2345-7", "Glucose", "mg/dL", "53", "70-99", "L"),
    ("2075-0", "Chloride", "mmol/L", "109", "98-107", "H"),
    ("2028-9", "CO2", "mmol/L", "22", "22-29", "N"),
    ("3094-0", "Urea nitrogen", "mg/dL", "6", "7-20", "L"),
)


def _oru_panels(count: int) -> tuple[str, list[str]]:
    """The shape of the demo hospital's lab results (sidecar.hospital), written out here, for
    ``count`` patients with their own values and times: caches see what a real feed gives them."""
    texts = []
    for n in range(count):
        when = f"202603{1 + n % 28:02d}{8 + n % 10:02d}{n % 60:02d}00+0800"
        segments = [
            f"MSH|^~\\&|LIS|DEMO-HOSP|SIDECAR|DEMO-HOSP|{when}||ORU^R01^ORU_R01|LAB{n:07d}|P|2.5.1"
            "||||||UNICODE UTF-8",
            f"PID|1||MRN{100000 + n}^^^DEMO-HOSP^MR||Garcia^David||{1940 + n % 60}0119|F|||"
            f"{n} Oak St^^Springfield^^310000^CHN||(555)748-{n % 10000:04d}^PRN^PH",
            f"OBR|1|ORD{n:07d}-P|ORD{n:07d}|CHEM10^Panel^L|||{when}|||||||||||||||{when}|||F",
        ]
        for number, (code, name, unit, value, limits, flag) in enumerate(_PANEL, 1):
            shifted = f"{float(value) * (0.8 + (n * number) % 7 / 10):.1f}"
            segments.append(
                f"OBX|{number}|NM|{code}^{name}^LN||{shifted}|{unit}|{limits}|{flag}|||F|||{when}"
            )
        texts.append("\r".join(segments))
    return f"ORU^R01 lab panel (10 OBX), {count} patients", texts


def _rate(operation: Callable[[str], object], texts: list[str], seconds: float, rounds: int) -> float:
    """Messages per CPU second over ``texts`` in turn, best of ``rounds`` rounds of about
    ``seconds`` (CPU) each."""
    best = 0.0
    for _ in range(rounds):
        count = 0
        start = time.thread_time()
        deadline = start + seconds
        while True:
            at = count % len(texts)
            for text in texts[at : at + 20]:
                operation(text)
                count += 1
            now = time.thread_time()
            if now >= deadline:
                break
        best = max(best, count / (now - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    messages = [("ADT^A01 canonical", [ADT_A01.rstrip("\r")]), _oru(), _oru_panels(500)]
    header = ("message", "ours+validate", "ours map only", "hl7apy parse", "ratio", "ratio+val")
    print(f"{header[0]:<45} {header[1]:>14} {header[2]:>14} {header[3]:>13} {header[4]:>7} {header[5]:>9}")
    for label, texts in messages:
        map_message(texts[0])  # warm caches (model imports) outside the timing
        parse_message(texts[0])
        validated = _rate(map_message, texts, args.seconds, args.rounds)
        mapped = _rate(partial(map_message, options=_NO_VALIDATION), texts, args.seconds, args.rounds)
        baseline = _rate(parse_message, texts, args.seconds, args.rounds)
        print(
            f"{label:<45} {validated:>12,.0f}/s {mapped:>12,.0f}/s {baseline:>11,.0f}/s "
            f"{mapped / baseline:>6.1f}x {validated / baseline:>8.1f}x"
        )
        print(f"{'':<45} {1000 / validated:>11.3f} ms {1000 / mapped:>11.3f} ms {1000 / baseline:>10.3f} ms")


if __name__ == "__main__":
    main()
