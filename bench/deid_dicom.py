"""DICOM de-identification benchmark: ours beside dicognito on pydicom's test files.

    .venv/bin/python -m bench.deid_dicom [--rounds N]

Baseline: dicognito (https://github.com/blairconrad/dicognito), not a project dependency.
Install it into the venv to measure against it:

    .venv/bin/pip install dicognito

Without it the baseline is skipped with a message. Each file is held in memory as bytes;
one operation is parse (``dcmread``) -> de-identify -> serialise (``dcmwrite``), the same
for both tools, so neither is charged for disk I/O. Files pydicom cannot read (some are
broken on purpose) and files a tool raises on are left out of that tool's count and
reported. Rounds alternate between the tools; the best of ``--rounds`` rounds is reported in
files/s, with the ratio.
"""

from __future__ import annotations

import argparse
import io
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset

from deid.dicom import deidentify_dataset
from deid.vault import Vault


def _load() -> tuple[list[tuple[str, bytes]], int]:
    files, broken = [], 0
    for name in sorted(get_testdata_files()):
        if not Path(name).is_file():
            continue  # the list includes a folder of DICOMDIR test files
        data = Path(name).read_bytes()
        try:
            pydicom.dcmread(io.BytesIO(data))
        except Exception:
            broken += 1
            continue
        files.append((Path(name).name, data))
    return files, broken


def _ours() -> Callable[[Dataset], Dataset]:
    vault = Vault(b"bench-secret-0123456789abcdef")
    return lambda ds: deidentify_dataset(ds, vault).dataset


def _dicognito() -> Callable[[Dataset], Dataset] | None:
    try:
        from dicognito.anonymizer import Anonymizer  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    anonymizer = Anonymizer(seed="bench")

    def run(ds: Dataset) -> Dataset:
        anonymizer.anonymize(ds)  # in place
        return ds

    return run


def _round(
    files: list[tuple[str, bytes]], tool: Callable[[Dataset], Dataset]
) -> tuple[float, int, list[str]]:
    done, failed = 0, []
    start = time.perf_counter()
    for name, data in files:
        try:
            out = tool(pydicom.dcmread(io.BytesIO(data)))
            pydicom.dcmwrite(io.BytesIO(), out)
            done += 1
        except Exception:
            failed.append(name)
    return time.perf_counter() - start, done, failed


def _measure(
    files: list[tuple[str, bytes]], tools: dict[str, Callable[[Dataset], Dataset]], rounds: int
) -> dict[str, tuple[float, int, list[str]]]:
    """Best files/s per tool. Rounds alternate between the tools, so a busy machine (other
    jobs, CPU frequency changes) weighs on both alike instead of on whichever ran second."""
    best = dict.fromkeys(tools, float("inf"))
    result: dict[str, tuple[float, int, list[str]]] = {}
    for _ in range(rounds):
        for name, tool in tools.items():
            elapsed, done, failed = _round(files, tool)
            best[name] = min(best[name], elapsed)
            result[name] = (done / best[name], done, failed)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # the deliberately odd test files warn a lot
    files, broken = _load()
    print(f"pydicom {pydicom.__version__} test files: {len(files)} readable, {broken} unreadable (skipped)")
    print("one op = dcmread(bytes) -> de-identify -> dcmwrite; best of", args.rounds, "rounds")
    tools = {"ours": _ours()}
    baseline = _dicognito()
    if baseline is not None:
        tools["dicognito"] = baseline
    result = _measure(files, tools, args.rounds)
    ours_rate, ours_done, ours_failed = result["ours"]
    print(f"  sidecar deid.dicom : {ours_rate:8.1f} files/s ({ours_done} files, {len(ours_failed)} failed)")
    if baseline is None:
        print("  dicognito          : not installed, skipped (.venv/bin/pip install dicognito)")
        return 0
    import dicognito  # type: ignore[import-not-found,unused-ignore]

    base_rate, base_done, base_failed = result["dicognito"]
    version = getattr(dicognito, "__version__", "?")
    print(
        f"  dicognito {version:8} : {base_rate:8.1f} files/s ({base_done} files, {len(base_failed)} failed)"
    )
    if base_failed:
        print(
            f"    dicognito failed on: {', '.join(base_failed[:10])}{' ...' if len(base_failed) > 10 else ''}"
        )
    print(f"  ratio ours/dicognito: {ours_rate / base_rate:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
