"""Package front doors that load on first use: a package's ``__init__`` names its public
members and the module each lives in, and ``lazy_exports`` imports that module only when a
member is first asked for. So ``import connectors`` (or ``sidecar --help``, or the offline
audit verifier) does not pay for SQLAlchemy, psycopg or the mapping tables it does not use.

Written by hand: PEP 562's module ``__getattr__`` is the standard mechanism and a dozen
lines; the libraries that wrap it (lazy_loader, apipkg) bring stub-file conventions we do not
need.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``exports`` maps each public name to the
    module that defines it; a member, once loaded, is kept in the package's namespace."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        vars(sys.modules[package])[name] = value
        return value

    __getattr__.exports = dict(exports)  # type: ignore[attr-defined]  # for tests/test_front_doors.py
    return __getattr__
