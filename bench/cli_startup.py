"""How long the command line takes to answer (issue 22): `sidecar --help`, `sidecar stats
--json` on a migrated data directory, and `sidecar convert` of one ADT, each the median of
``--runs`` runs of the installed command as a user types it, beside `python -c pass` (the
interpreter's own start) measured in the same run. Then, per command, the modules whose
import costs most (``python -X importtime``), to see where the time goes.

    .venv/bin/python -m bench.cli_startup [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fixtures.messages import ADT_A01

TARGETS_S = {"--help": 0.3, "stats --json": 0.3, "convert ADT": 0.5}  # issue 22's


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def _top_imports(argv: list[str], env: dict[str, str], n: int = 6) -> list[tuple[int, str]]:
    found = subprocess.run(
        [sys.executable, "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True, check=False
    ).stderr
    rows = []
    for line in found.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
            rows.append((int(parts[1]), parts[2].strip()))  # cumulative µs of a top-level import
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        adt = Path(folder) / "adt.hl7"
        adt.write_text(ADT_A01, encoding="utf-8")
        env = {**os.environ, "SIDECAR_DATA_DIR": str(data)}
        python = [sys.executable]
        cli = [sys.executable, "-m", "sidecar"]
        subprocess.run(
            [*cli, "stats", "--json"], env=env, stdout=subprocess.DEVNULL, check=True
        )  # migrate once
        commands = {
            "python -c pass": [*python, "-c", "pass"],
            "--help": [*cli, "--help"],
            "stats --json": [*cli, "stats", "--json"],
            "convert ADT": [*cli, "convert", str(adt)],
        }
        print(f"{'command':16s} {'median s':>9s} {'min s':>7s} {'target':>7s}")
        for label, argv in commands.items():
            times = [_timed(argv, env) for _ in range(args.runs)]
            target = TARGETS_S.get(label)
            mark = (
                ""
                if target is None
                else f"{target:6.1f}{' ok' if statistics.median(times) <= target else ' OVER'}"
            )
            print(f"{label:16s} {statistics.median(times):9.3f} {min(times):7.3f} {mark:>7s}")
        for label, argv in commands.items():
            if label.startswith("python"):
                continue
            heaviest = ", ".join(f"{name} {us / 1000:.0f} ms" for us, name in _top_imports(argv, env))
            print(f"\n{label}: heaviest imports: {heaviest}")


if __name__ == "__main__":
    main()
