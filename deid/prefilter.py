"""Exact pre-checks that spare the scrubber and the leak check most of their regular expressions.

A pattern built from a known value can only match a text that contains the value's
literal parts. The checks here test that with plain substring searches on a folded form
of the text (for many values, only those sharing a two- or three-character piece with
the text are searched for). They never decide that something matched: a value that
passes is handed to its real pattern.

The fold is the one ``re.IGNORECASE`` uses, not ``str.casefold``: sre compares the simple
lowercase mapping of each character (plus a few extra equivalences such as "s" and "ſ"),
and ``"İ".casefold()`` is two characters while sre matches it with "i". Folding both
sides to one representative per sre equivalence class, character by character, keeps
"the pattern can match" implying "the folded literal is a substring of the folded text".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .budget import Budget

_T = TypeVar("_T")

# sre's own tables: the simple lowercase mapping it matches with and its extra cases.
_SRE: Any = importlib.import_module("_sre")
_CASEFIX: Any = importlib.import_module("re._casefix")

_PRIVATE_USE_FROM = 0xF0000  # planes 15 and 16: the scrubber's placeholder sentinels
# Texts longer than this are prepared afresh each time rather than kept in a cache (the
# ones that recur, units and code displays, are short; the caches stay small).
MAX_CACHED_TEXT = 128


class _Fold(dict[int, int]):
    """Code point -> the smallest lowercase form of its sre case class, filled in as the
    characters are met (a class is a lowercase form, its extra cases, and every character
    whose simple lowercase mapping is one of those)."""

    def __missing__(self, code: int) -> int:
        low: int = _SRE.unicode_tolower(code)
        extras: tuple[int, ...] = _CASEFIX._EXTRA_CASES.get(low, ())
        folded = min((low, *extras))
        if len(self) < _MAX_FOLDED:  # text can hold any of the million code points
            self[code] = folded
        return folded


_MAX_FOLDED = 1 << 16


_FOLD = _Fold()


def fold(text: str) -> str:
    """``text`` with every character replaced by the representative of its sre case class."""
    if text.isascii():
        return text.lower()  # the same as the table for ASCII (tests/test_deid_prefilter.py)
    return text.translate(_FOLD)


def has_private_use(text: str) -> bool:
    return not text.isascii() and ord(max(text)) >= _PRIVATE_USE_FROM


# A trigger: literals that must all occur (folded) in a text for a pattern to be able to
# match it. A target is live when any of its triggers is; ``None`` means always live.
Trigger = tuple[str, ...]
# A trigger folded, with the piece it is indexed by ("" for a one-character literal).
Prepared = tuple[str, Trigger]


def prepare(triggers: Sequence[Trigger] | None) -> tuple[Prepared, ...] | None:
    """``triggers`` folded and keyed, once per value (the index of a message reuses them)."""
    if triggers is None:
        return None
    out = []
    for trigger in triggers:
        folded = tuple(fold(s) for s in trigger)
        longest = max(folded, key=len)
        out.append((longest[:3] if len(longest) >= 2 else "", folded))
    return tuple(out)


class LiteralIndex:
    """Targets (ints) with their prepared triggers.

    A few triggers are each searched for in a text; many (a patient with hundreds of
    known values) are looked up by the pieces of the text instead, so the cost follows
    the text's length rather than the number of values."""

    __slots__ = ("_all", "_always", "_by_key", "_scan", "_short")

    def __init__(self, entries: Iterable[tuple[int, tuple[Prepared, ...] | None]]) -> None:
        always: list[int] = []
        every: list[tuple[int, Trigger]] = []
        short: list[tuple[int, Trigger]] = []
        by_key: dict[str, list[tuple[int, Trigger]]] = {}
        for target, prepared in entries:
            if prepared is None:
                always.append(target)
                continue
            for key, folded in prepared:
                every.append((target, folded))
                if key:
                    by_key.setdefault(key, []).append((target, folded))
                else:
                    short.append((target, folded))
        self._always = frozenset(always)
        self._all = tuple(every)
        # (target, first literal, the others): most texts hold no first literal at all.
        self._scan = tuple((target, trigger[0], trigger[1:]) for target, trigger in every)
        self._short = tuple(short)
        self._by_key = by_key

    def __bool__(self) -> bool:
        return bool(self._always or self._all)

    def live(self, folded: str, budget: Budget | None = None) -> AbstractSet[int]:
        """The targets with a trigger whose literals all occur in ``folded`` (a fold()).

        Each search is linear in the text, so a message reporting thousands of values
        costs their number times its text: spent from ``budget`` (deid.budget) in chunks."""
        found = set(self._always)
        count = len(self._all)
        if count <= _SEARCHED_TRIGGERS or (len(folded) > MAX_CACHED_TEXT and count <= _SEARCHED_IN_LONG):
            _in_chunks(_scan_into, found, self._scan, folded, budget)
            return found
        by_key = self._by_key
        present: set[str] = set()
        # A long text's pieces a window at a time (windows overlapping by two characters),
        # so the set of pieces stays small; a search per trigger would cost their number
        # times the text (a message reporting 10,000 values, a 256 KiB note: seconds).
        for start in range(0, max(len(folded) - 2, 1), _WINDOW):
            window = folded[start : start + _WINDOW + 2]
            keys = {window[i : i + 3] for i in range(len(window) - 2)}
            keys.update(window[i : i + 2] for i in range(len(window) - 1))
            present |= keys & by_key.keys()
            if budget is not None:
                budget.spend(len(window))
        candidates = [*self._short, *(entry for key in present for entry in by_key[key])]
        _in_chunks(_check_into, found, candidates, folded, budget)
        return found


_CHUNK = 256  # searches between two spends from a budget


def _scan_into(found: set[int], scan: Sequence[tuple[int, str, Trigger]], folded: str) -> None:
    for target, first, rest in scan:
        if first in folded and target not in found and all(map(folded.__contains__, rest)):
            found.add(target)


def _check_into(found: set[int], candidates: Sequence[tuple[int, Trigger]], folded: str) -> None:
    contains = folded.__contains__
    for target, trigger in candidates:
        if target not in found and all(map(contains, trigger)):
            found.add(target)


def _in_chunks(
    run: Callable[[set[int], Sequence[_T], str], None],
    found: set[int],
    items: Sequence[_T],
    folded: str,
    budget: Budget | None,
) -> None:
    """``run`` over ``items`` at once when few or unbudgeted (the usual case: no copy), else
    chunk by chunk, each spent from ``budget`` as that many searches of ``folded``."""
    if budget is None or len(items) <= _CHUNK:
        run(found, items, folded)
        return
    for start in range(0, len(items), _CHUNK):
        budget.spend(_CHUNK * len(folded))
        run(found, items[start : start + _CHUNK], folded)


_SEARCHED_TRIGGERS = 96
# Beyond this many triggers a long text's pieces are looked up rather than every trigger
# searched for (measured: even at ~500 triggers, docs/deid-performance.md).
_SEARCHED_IN_LONG = 512
_WINDOW = 1 << 16
