"""Mapping benchmark: parse + map messages/s on one core, beside hl7apy's ``parse_message``.

    .venv/bin/python -m bench.mapping [--seconds S] [--rounds N]

Messages: the canonical ADT^A01 (tests/fixtures/messages.py) and a 16-segment ORU^R01 (corpus
file msfc__LAB-ORU-1 from ../shared, else the canonical ORU^R01). Ours is measured twice:
``map_message`` as shipped (every resource validated by fhir.resources), and with
``MappingOptions(validate=False)`` (tokenize + map only), since validation dominates. hl7apy
only parses (no FHIR), so the fair ratio is the one without validation; both are printed.
Single process, single thread; best of ``--rounds`` rounds.
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


def _oru() -> tuple[str, str]:
    path = _SHARED / "msfc__LAB-ORU-1.hl7"
    if path.is_file():
        text = path.read_text(encoding="utf-8").lstrip("\ufeff")
        lines = [line for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if line.strip()]
        return f"ORU^R01 msfc__LAB-ORU-1 ({len(lines)} segments)", "\r".join(lines)
    return "ORU^R01 canonical", ORU_R01


def _rate(operation: Callable[[], object], seconds: float, rounds: int) -> float:
    """Operations per second, best of ``rounds`` rounds of about ``seconds`` each."""
    best = 0.0
    for _ in range(rounds):
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(20):
                operation()
            count += 20
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, count / (now - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    messages = [("ADT^A01 canonical", ADT_A01.rstrip("\r")), _oru()]
    header = ("message", "ours+validate", "ours map only", "hl7apy parse", "ratio", "ratio+val")
    print(f"{header[0]:<40} {header[1]:>14} {header[2]:>14} {header[3]:>13} {header[4]:>7} {header[5]:>9}")
    for label, text in messages:
        map_message(text)  # warm caches (model imports) outside the timing
        parse_message(text)
        validated = _rate(partial(map_message, text), args.seconds, args.rounds)
        mapped = _rate(partial(map_message, text, _NO_VALIDATION), args.seconds, args.rounds)
        baseline = _rate(partial(parse_message, text), args.seconds, args.rounds)
        print(
            f"{label:<40} {validated:>12,.0f}/s {mapped:>12,.0f}/s {baseline:>11,.0f}/s "
            f"{mapped / baseline:>6.1f}x {validated / baseline:>8.1f}x"
        )


if __name__ == "__main__":
    main()
