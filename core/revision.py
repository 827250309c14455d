"""The schema version the code expects, without Alembic: the newest migration's revision,
read from the file names (``NNNN_what.py`` holds revision ``NNNN``; tests/test_cli_startup.py
checks that against Alembic's own head)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["VERSION_QUERY", "head_revision", "is_head"]

VERSION_QUERY = "SELECT version_num FROM alembic_version"

_VERSIONS = Path(__file__).with_name("migrations") / "versions"


def head_revision() -> str:
    return max(p.name[:4] for p in _VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py"))


def is_head(versions: Iterable[object]) -> bool:
    """Whether the revisions a database's ``alembic_version`` holds are exactly the code's."""
    return [str(v) for v in versions] == [head_revision()]
