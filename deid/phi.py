"""How a known identifying value is recognised in text; shared by the scrubber and the leak check.

Both sides must agree on what counts as an occurrence, otherwise the leak check would
flag text the scrubber rightly left alone (a name "Ann" inside "Annual"), or the scrubber
would leave what the leak check is looking for.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping

from core.errors import DeidError

from .budget import MAX_VALUE_CHARS, OverBudget
from .policy import PHI_KINDS

# Letters and digits of alphabetic scripts: a value that starts or ends with one of these
# must not continue into a neighbouring one. CJK is deliberately not in here: Chinese
# text has no spaces, so "患者王芳入院" must still match "王芳".
_WORD_CHAR = r"[0-9A-Za-z\u00C0-\u024F\u0370-\u03FF\u0400-\u04FF]"
_WORD_CHAR_RE = re.compile(_WORD_CHAR)

_WIDE_RANGES = (
    (0x3040, 0x30FF),  # kana
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7AF),  # hangul syllables
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x2FFFF),  # CJK extensions B and later
)

_NAME_SPLIT = re.compile(r"[\s^,;]+")
_DIGITS = re.compile(r"\d")


def normalise_text(text: str) -> str:
    """NFKC, so full-width digits and letters compare equal to their ASCII forms."""
    return unicodedata.normalize("NFKC", text)


def _is_wide(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _WIDE_RANGES)


def significance(value: str) -> int:
    """Length, with a CJK character counted as two.

    A two-character Chinese name is as specific as a five-letter Latin one; counting
    characters alone would skip most Chinese given names.
    """
    if value.isascii():
        return len(value)
    return sum(2 if _is_wide(c) else 1 for c in value)


def digit_count(value: str) -> int:
    return len(_DIGITS.findall(value))


def longest_digit_run(value: str) -> int:
    return max((len(run) for run in re.findall(r"\d+", value)), default=0)


def variants(phi_values: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """(normalised value, kind) for each phi value, plus the parts of multi-part names.

    Free text says "Mr Smith" more often than "John Smith", so each part of a name is
    looked for on its own as well, and a Chinese name reported in parts is also looked for
    written as one word. Raises DeidError for a kind the policy does not know.
    """
    seen: set[tuple[str, str]] = set()
    for raw, kind in phi_values.items():
        if kind not in PHI_KINDS:
            # The kind is not echoed: a mapper that swapped value and kind would leak here.
            raise DeidError("phi_values holds a kind outside PHI_KINDS")
        for candidate, folded in _candidates(raw, kind):
            if (folded, kind) not in seen:
                seen.add((folded, kind))
                yield candidate, kind


def variant_list(phi_values: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``tuple(variants(phi_values))``; the scrubber and the leak check of one message share it."""
    items = tuple(phi_values.items())
    last = _last_variants
    if last is not None and last[0] == items:
        return last[1]
    found = tuple(variants(phi_values))
    _remember_variants((items, found))
    return found


# One set only: a set of values recurs within a message, rarely after it (it holds the
# message's own order numbers and times), and what a cache keeps too long costs the GC.
_last_variants: tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] | None = None


def _remember_variants(entry: tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]) -> None:
    global _last_variants
    _last_variants = entry


@functools.lru_cache(maxsize=8192)
def _candidates(raw: str, kind: str) -> tuple[tuple[str, str], ...]:
    # (candidate, casefolded) of one value; cached because every message restates them.
    value = " ".join(normalise_text(raw).split())
    if len(value) > MAX_VALUE_CHARS:
        # Its pattern would cost its length at every place a text may hold it; no HL7
        # component the mapping reports is this long. The reason holds no value.
        raise OverBudget(f"a reported {kind} value is longer than {MAX_VALUE_CHARS:,} characters")
    candidates = [value]
    if kind == "NAME":
        parts = [part for part in _NAME_SPLIT.split(value) if part]
        candidates += parts
        # Chinese writes a full name without a space: family "王" + given "小明" is "王小明".
        if len(parts) > 1 and all(_is_wide(c) for c in "".join(parts)):
            candidates.append("".join(parts))
    return tuple((candidate, candidate.casefold()) for candidate in candidates if candidate)


_DIGIT_RE = re.compile(r"\d")
_NOT_BEFORE = {"digit": _DIGIT_RE, "word": _WORD_CHAR_RE}


class ValuePattern:
    """A known value's pattern, with its edge rules checked in Python instead of by
    look-arounds.

    A look-around holding the letter class made sre build a 64K-entry charset for every
    pattern: ~0.6 ms to compile each new value, half of a new patient's mapping and
    de-identification (profiled). The matching is the same as the look-around form whose
    text ``pattern`` keeps: the leftmost start whose match passes both edge checks (a
    start has one match, the body having no alternatives), then onwards from its end.
    ``search`` and ``sub`` work as on ``re.Pattern``.
    """

    __slots__ = ("_after", "_before", "body", "groupindex", "pattern")

    def __init__(
        self,
        body: re.Pattern[str],
        pattern: str,
        before: re.Pattern[str] | None,
        after: re.Pattern[str] | None,
    ) -> None:
        self.body, self.pattern = body, pattern
        self._before, self._after = before, after
        self.groupindex: Mapping[str, int] = {}

    # Equal when their look-around form is: a rule set can then drop duplicates.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValuePattern) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def _fits(self, text: str, match: re.Match[str]) -> bool:
        start, end = match.span()
        if self._before is not None and start > 0 and self._before.fullmatch(text[start - 1]):
            return False
        return not (self._after is not None and end < len(text) and self._after.fullmatch(text[end]))

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        pos = 0
        while (match := self.body.search(text, pos)) is not None:
            if self._fits(text, match):
                yield match
                pos = match.end()
            else:
                pos = match.start() + 1

    def search(self, text: str) -> re.Match[str] | None:
        return next(self.finditer(text), None)

    def sub(self, repl: str | Callable[[re.Match[str]], str], text: str) -> str:
        parts: list[str] = []
        last = 0
        for match in self.finditer(text):
            parts.append(text[last : match.start()])
            parts.append(repl if isinstance(repl, str) else repl(match))
            last = match.end()
        if not parts:
            return text
        parts.append(text[last:])
        return "".join(parts)


def value_pattern(value: str, *, bound_digits: bool) -> ValuePattern:
    """A case-insensitive pattern for ``value`` with flexible inner whitespace.

    An edge that is a letter of an alphabetic script may not continue into another such
    character. An edge that is a digit may not continue into another digit only if
    ``bound_digits``: the scrubber over-matches digits on purpose (a zero-padded MRN is
    still the MRN), the leak check does not (an MRN "4711" is not leaked by a code "14711").
    """
    body, text, before, after = _pattern_parts(value, bound_digits)
    return ValuePattern(re.compile(body, re.IGNORECASE), text, before, after)


def _pattern_parts(
    value: str, bound_digits: bool
) -> tuple[str, str, re.Pattern[str] | None, re.Pattern[str] | None]:
    """(body, look-around form, edge before, edge after) of ``value_pattern``."""
    body = r"\s+".join(re.escape(part) for part in value.split())
    first, last = value[0], value[-1]
    before = after = None
    prefix = suffix = ""
    if first.isdigit():
        if bound_digits:
            before, prefix = _NOT_BEFORE["digit"], r"(?<!\d)"
    elif _WORD_CHAR_RE.fullmatch(first):
        before, prefix = _NOT_BEFORE["word"], rf"(?<!(?-i:{_WORD_CHAR}))"
    if last.isdigit():
        if bound_digits:
            after, suffix = _NOT_BEFORE["digit"], r"(?!\d)"
    elif _WORD_CHAR_RE.fullmatch(last):
        after, suffix = _NOT_BEFORE["word"], rf"(?!(?-i:{_WORD_CHAR}))"
    return body, prefix + body + suffix, before, after


def value_pattern_text(value: str, *, bound_digits: bool) -> str:
    """``value_pattern(value, bound_digits=...).pattern``, without compiling anything."""
    return _pattern_parts(value, bound_digits)[1]


# Compiled patterns are shared: one depends on its value alone, whoever reported it, and
# compiling is most of what a new value costs.
cached_value_pattern = functools.lru_cache(maxsize=4096)(value_pattern)
