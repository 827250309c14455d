"""Generate ``profile_table.py`` from the PS3.15 Table E.1-1 CSVs in ``../shared/spec``.

The runtime must not read ``../shared`` (deployments do not ship it), so the table is
compiled into a Python module that is committed. Run after the CSVs change:

    .venv/bin/python -m deid.dicom.make_profile_table [SHARED_SPEC_DIR]
    .venv/bin/ruff format deid/dicom/profile_table.py

``tests/test_deid_dicom_profile.py`` regenerates the text and fails on any drift.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

TABLE_CSV = "ps3.15_table_E.1-1.csv"
ADDITIONS_CSV = "ps3.15_table_E.1-1_additions_2024c_to_2026c.csv"

# Option columns in the order they are stored in each row tuple, after the basic action.
OPTION_COLUMNS = (
    "retain_safe_private",
    "retain_uids",
    "retain_device_ident",
    "retain_institution_ident",
    "retain_patient_chars",
    "retain_long_full_dates",
    "retain_long_modif_dates",
    "clean_desc",
    "clean_struct_cont",
    "clean_graph",
)

_LINE_LENGTH = 110
_TAG = re.compile(r"\(([0-9A-Fa-fx]{4}),([0-9A-Fa-fx]{4})\)")


def _mask(text: str) -> tuple[int, int]:
    """(mask, value) of an 8-hex-digit tag pattern where 'x' matches any digit."""
    mask = value = 0
    for ch in text:
        mask <<= 4
        value <<= 4
        if ch.lower() != "x":
            mask |= 0xF
            value |= int(ch, 16)
    return mask, value


def _entry(code: str, name: str) -> str:
    # Same layout ruff format would give, so the committed file is the generator's output.
    line = f"    {code}  # {name}"
    return line if len(line) <= _LINE_LENGTH else f"    # {name}\n    {code}"


def render(spec_dir: Path) -> str:
    exact: list[tuple[int, tuple[str, ...], str]] = []
    ranges: list[tuple[int, int, tuple[str, ...], str]] = []
    private: tuple[str, ...] | None = None
    with (spec_dir / TABLE_CSV).open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            codes = (row["basic_profile"], *(row[c] for c in OPTION_COLUMNS))
            name = row["attribute_name"].strip()
            if "gggg" in row["tag"]:
                private = codes
                continue
            match = _TAG.search(row["tag"])
            if match is None:
                raise SystemExit(f"unreadable tag in {TABLE_CSV}: {row['tag']!r}")
            text = match.group(1) + match.group(2)
            if "x" in text.lower():
                mask, value = _mask(text)
                ranges.append((mask, value, codes, name))
            else:
                exact.append((int(text, 16), codes, name))
    known = {tag for tag, _, _ in exact}
    with (spec_dir / ADDITIONS_CSV).open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            match = _TAG.search(row["tag"])
            if match is None:
                raise SystemExit(f"unreadable tag in {ADDITIONS_CSV}: {row['tag']!r}")
            tag = int(match.group(1) + match.group(2), 16)
            if tag not in known:
                # The additions come without option columns; spec/README says: remove.
                exact.append((tag, ("X", *[""] * len(OPTION_COLUMNS)), row["attribute_name"].strip()))
    if private is None:
        raise SystemExit("no private-attributes row in the table")
    exact.sort()

    def tup(codes: tuple[str, ...]) -> str:
        return "(" + ", ".join(f'"{c}"' for c in codes) + ")"

    lines = [
        '"""PS3.15 Table E.1-1 (2024c, plus the 2024c-2026c additions as X), generated.',
        "",
        "Do not edit: regenerate with ``python -m deid.dicom.make_profile_table``.",
        "Each row is (basic profile action, *one action per OPTION_COLUMNS entry); '' = no entry.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Final",
        "",
        "OPTION_COLUMNS: Final = (",
        *[f'    "{c}",' for c in OPTION_COLUMNS],
        ")",
        "",
        "ACTIONS: Final[dict[int, tuple[str, ...]]] = {",
    ]
    lines += [_entry(f"0x{tag:08X}: {tup(codes)},", name) for tag, codes, name in exact]
    lines += ["}", "", "# (mask, value, row): a tag t matches when t & mask == value.", "RANGES: Final = ("]
    lines += [_entry(f"(0x{m:08X}, 0x{v:08X}, {tup(codes)}),", name) for m, v, codes, name in ranges]
    lines += [")", "", "# Row for private attributes (odd group), which the table lists as (gggg,eeee).", ""]
    lines[-1] = f"PRIVATE: Final = {tup(private)}"
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[2]
    spec_dir = Path(argv[1]) if len(argv) > 1 else root.parent / "shared" / "spec"
    out = Path(__file__).with_name("profile_table.py")
    out.write_text(render(spec_dir), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
