"""Each package's front door (issue 22), as httpx's test_exported_members checks its own: a
docstring, an ``__all__`` that names every member the door lists and only those, each member
resolving to something defined inside the package; and opening the doors loads none of the
heavy libraries (the members load on first use), so a command pays only for what it uses.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGES = ("core", "connectors", "mapping", "deid", "audit", "worker", "sandbox", "sidecar")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", PACKAGES)
def test_exported_members(name: str) -> None:
    package = importlib.import_module(name)
    assert (package.__doc__ or "").strip(), f"{name} has no docstring"
    exported = package.__all__
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    for member in exported:
        value = getattr(package, member)  # raises when __all__ names what the door does not hold
        module = getattr(value, "__module__", None)
        if module is not None and not isinstance(value, str | int | tuple | dict | frozenset):
            assert module == name or module.startswith(name + "."), f"{name}.{member} comes from {module}"
    listed = getattr(getattr(package, "__getattr__", None), "exports", None)
    if listed is not None:  # a lazy door (core.frontdoor): what it loads is what __all__ says
        assert sorted(listed) == sorted(exported), f"{name}: the lazy map and __all__ disagree"
    assert not hasattr(package, "no_such_member")  # the door raises AttributeError for the rest


def test_opening_every_front_door_loads_no_heavy_library() -> None:
    code = (
        "import sys\n"
        f"for name in {PACKAGES!r}:\n"
        "    if name not in ('deid', 'sandbox'):\n"  # their doors are eager: every user runs them
        "        __import__(name)\n"
        "heavy = ('sqlalchemy', 'pydantic', 'alembic', 'celery', 'psycopg', 'fastapi', 'hl7apy', 'pydicom')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == ""
