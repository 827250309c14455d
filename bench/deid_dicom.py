"""DICOM de-identification benchmark: ours beside dicognito on pydicom's test files.

    make bench-dicom                                  # installs the [bench] extra (dicognito)
    .venv/bin/python -m bench.deid_dicom [--rounds N] [--clock cpu|wall]

Baseline: dicognito (https://github.com/blairconrad/dicognito), not a runtime dependency;
it comes with the ``bench`` extra (``pip install -e '.[bench]'``). Without it only our
figures are printed.

What is timed, for both tools alike: one operation is file bytes -> ``dcmread`` ->
de-identify -> ``dcmwrite`` to bytes, every file held in memory so neither tool pays for
disk I/O. Reading is lazy in pydicom and writing encodes whatever the tool decoded or
replaced, so the whole operation is the fair unit; the de-identification step alone is
printed beside it for information. Ours returns a new dataset and leaves the input alone;
dicognito changes the dataset in place; neither difference is charged for separately.

Files pydicom cannot read (some are broken on purpose) are skipped, and so is any file
either tool fails on (listed), so both are timed on exactly the same files. One untimed
warm-up pass runs first (imports, first-use caches on both sides).

Noise: the tools alternate file by file (which goes first alternates too), so a busy
machine, CPU frequency changes or other jobs weigh on both alike within every round.
The clock is the process CPU time by default (``--clock wall`` for elapsed time), which
does not count the time other processes hold the CPU. The garbage collector is paused
inside a round and run between rounds, so neither tool pays for the other's garbage.
Reported: files/s per round and the median over the rounds, and the ratio (median of the
per-round ratios).
"""

from __future__ import annotations

import argparse
import gc
import io
import statistics
import time
import warnings
from collections.abc import Callable

import pydicom
from pydicom.dataset import Dataset

from deid.dicom import deidentify_dataset
from deid.vault import Vault
from tests.corpus import pydicom_shipped_files

Tool = Callable[[Dataset], Dataset]


def _load() -> tuple[list[tuple[str, bytes]], int]:
    files, broken = [], 0
    for name in pydicom_shipped_files():
        data = name.read_bytes()
        try:
            pydicom.dcmread(io.BytesIO(data))
        except Exception:
            broken += 1
            continue
        files.append((name.name, data))
    return files, broken


def _ours() -> Tool:
    vault = Vault(b"bench-secret-0123456789abcdef")
    return lambda ds: deidentify_dataset(ds, vault).dataset


def _dicognito() -> Tool | None:
    try:
        from dicognito.anonymizer import Anonymizer  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    anonymizer = Anonymizer(seed="bench")

    def run(ds: Dataset) -> Dataset:
        anonymizer.anonymize(ds)  # in place
        return ds

    return run


def _op(tool: Tool, data: bytes, clock: Callable[[], float]) -> tuple[float, float]:
    """(whole operation, de-identification step) for one file, in ``clock`` seconds."""
    start = clock()
    ds = pydicom.dcmread(io.BytesIO(data))
    before = clock()
    out = tool(ds)
    after = clock()
    pydicom.dcmwrite(io.BytesIO(), out)
    return clock() - start, after - before


def _usable(files: list[tuple[str, bytes]], tools: dict[str, Tool]) -> tuple[list[bytes], list[str]]:
    """The files every tool handles (this is also the warm-up pass), and the others."""
    usable, failed = [], []
    for name, data in files:
        problems = []
        for tool_name, tool in tools.items():
            try:
                _op(tool, data, time.perf_counter)
            except Exception as exc:
                problems.append(f"{tool_name}: {type(exc).__name__}")
        if problems:
            failed.append(f"{name} ({', '.join(problems)})")
        else:
            usable.append(data)
    return usable, failed


def _rounds(
    files: list[bytes], tools: dict[str, Tool], rounds: int, clock: Callable[[], float]
) -> list[dict[str, tuple[float, float]]]:
    """Per round and tool: (seconds for all files, of which the de-identification step)."""
    names = list(tools)
    results = []
    for number in range(rounds):
        totals = dict.fromkeys(names, 0.0)
        steps = dict.fromkeys(names, 0.0)
        gc.collect()
        gc.disable()
        try:
            for index, data in enumerate(files):
                order = names if (index + number) % 2 == 0 else names[::-1]
                for name in order:
                    whole, step = _op(tools[name], data, clock)
                    totals[name] += whole
                    steps[name] += step
        finally:
            gc.enable()
        results.append({name: (totals[name], steps[name]) for name in names})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    warnings.simplefilter("ignore")  # the deliberately odd test files warn a lot
    files, broken = _load()
    tools: dict[str, Tool] = {"ours": _ours()}
    baseline = _dicognito()
    if baseline is not None:
        tools["dicognito"] = baseline
    usable, failed = _usable(files, tools)
    print(
        f"pydicom {pydicom.__version__} test files: {len(files)} readable, {broken} unreadable;"
        f" {len(usable)} timed, {len(failed)} left out (a tool failed)"
    )
    for line in failed:
        print(f"  left out: {line}")
    print(
        f"one op = dcmread(bytes) -> de-identify -> dcmwrite(bytes); tools alternate file by file;"
        f" {args.rounds} rounds, {args.clock} clock"
    )
    results = _rounds(usable, tools, args.rounds, clock)
    count = len(usable)
    for number, result in enumerate(results, 1):
        line = "  ".join(f"{name} {count / whole:7.1f}" for name, (whole, _step) in result.items())
        if baseline is not None:
            line += f"  ratio {result['dicognito'][0] / result['ours'][0]:5.2f}x"
        print(f"  round {number}: files/s  {line}")

    def median_rate(name: str, part: int) -> float:
        return statistics.median(count / result[name][part] for result in results)

    print("median files/s   whole op   de-identify step only")
    print(f"  sidecar deid.dicom : {median_rate('ours', 0):8.1f}   {median_rate('ours', 1):8.1f}")
    if baseline is None:
        print("  dicognito          : not installed, skipped (make bench-dicom installs it)")
        return 0
    import dicognito  # type: ignore[import-not-found,unused-ignore]

    version = getattr(dicognito, "__version__", "?")
    print(
        f"  dicognito {version:8} : {median_rate('dicognito', 0):8.1f}   {median_rate('dicognito', 1):8.1f}"
    )
    whole_ratio = statistics.median(r["dicognito"][0] / r["ours"][0] for r in results)
    step_ratio = statistics.median(r["dicognito"][1] / r["ours"][1] for r in results)
    print(f"  ratio ours/dicognito (median of rounds): {whole_ratio:.2f}x whole op, {step_ratio:.2f}x step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
