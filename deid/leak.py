"""The last gate: no phi value the message reported may survive into the output.

Independent of how the output was produced, this walks every key and value of every
resource and looks for each reported value. It fails closed: a coincidental match is
reported as a leak, because letting a real one through is the worse error. Its message
names kinds and element paths only, never the value, so it is safe to log.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import IdentifierLeak

from . import phi, prefilter
from .budget import Budget
from .dates import is_fhir_date, parse_loose_date
from .policy import COMPLEX, PSEUDONYM_SYSTEM, RESOURCES

_MIN_SIGNIFICANCE = 4
_MIN_NUMERIC_DIGITS = 4
# Below this, a digits-only comparison across separators matches by chance too often
# (codes, quantities, shifted dates); the literal comparison still covers short values.
_MIN_DIGITS_FOR_RUNS = 7
_NUMERIC_KINDS = frozenset({"ID", "PHONE"})
# Digits joined by what people write between them in phone numbers and ids.
_DIGIT_RUN = re.compile(r"\d(?:[ \-./()+]{0,3}\d)*")
_DIGIT = re.compile(r"\d")
_OUTPUT_DATE_SHAPE = re.compile(r"\d{4}-\d{2}(?:-\d{2}(?:[T ]\d{2}:\d{2}.*)?)?")
_SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_TOKEN_KEYS = frozenset({"id", "reference"})
# Values at these keys are vocabulary the mapper writes (resource types, code-system URIs,
# FHIR codes), never data copied from the message. Real feeds name test patients
# "PATIENT" or "LOINC", which matched them and dead-lettered clean messages.
_STRUCTURAL_KEYS = frozenset({"resourceType", "system", "url", "profile", "status", "gender", "use"})
_MAX_REPORTED = 20
_NEEDLES_PER_SPEND = 64
_POLICY_ELEMENT_NAMES: frozenset[str] = frozenset(
    {
        "resourceType",
        "id",
        "meta",
        *(n for e in COMPLEX.values() for n in e),
        *(n for e in RESOURCES.values() for n in e),
    }
)


@dataclass(frozen=True)
class _Needle:
    kind: str
    casefolded: str
    value: str
    digits: str  # compared against digit runs when not empty
    # What a text must hold (folded) for the pattern to match: the value's parts.
    literals: tuple[str, ...] = field(compare=False, default=())

    @property
    def pattern(self) -> phi.ValuePattern:
        # Compiled only for a text that holds the value's literal parts (deid.prefilter).
        return phi.cached_value_pattern(self.value, bound_digits=True)


@functools.lru_cache(maxsize=8192)
def _needle(value: str, kind: str) -> _Needle | None:
    """The needle for one variant, or None if it is not searched for."""
    if kind == "DATE" and (date := parse_loose_date(value)) is not None and date.precision == "year":
        return None  # a year is not identifying, and every date of that year contains it
    if kind == "DATE" and _OUTPUT_DATE_SHAPE.fullmatch(value):
        # De-identified text holds shifted dates in exactly this shape, and a shifted date
        # may equal another real date of the same message (two dates one offset apart).
        # Such values are still scrubbed; the raw HL7 forms are what is checked here.
        return None
    digits = "".join(re.findall(r"\d", value))
    numeric = kind in _NUMERIC_KINDS and len(digits) >= _MIN_NUMERIC_DIGITS
    if phi.significance(value) < _MIN_SIGNIFICANCE and not numeric:
        return None
    digits = digits if numeric and len(digits) >= _MIN_DIGITS_FOR_RUNS else ""
    return _Needle(
        kind=kind,
        casefolded=value.casefold(),
        value=value,
        digits=digits,
        literals=tuple(prefilter.fold(part) for part in value.split()),
    )


def _needles(phi_values: Mapping[str, str]) -> list[_Needle]:
    found = (_needle(value, kind) for value, kind in phi.variant_list(phi_values))
    return [needle for needle in found if needle is not None]


def _digit_runs(text: str) -> list[str]:
    return [re.sub(r"\D", "", run.group()) for run in _DIGIT_RUN.finditer(text)]


def _hits_text(needle: _Needle, text: str, runs: list[str] | None = None) -> bool:
    if needle.pattern.search(text):
        return True
    if needle.digits:
        return any(needle.digits in run for run in (_digit_runs(text) if runs is None else runs))
    return False


def _hits_token(needle: _Needle, token: str) -> bool:
    # Ids and references are generated; a chance substring of a hex digest is not a leak,
    # but an id or reference segment that *is* a reported value is.
    segments = token.split("/")
    # "Patient/<id>": the type segment is vocabulary; only the id segments can leak.
    for segment in segments[1:] if len(segments) > 1 else segments:
        if segment.casefold() == needle.casefolded:
            return True
        if needle.digits and segment.isdigit() and segment == needle.digits:
            return True
    return False


class _Search:
    """The needles of one set of phi values, compared with a whole message at once.

    A needle's pattern can only match a text that holds its literal parts (folded as sre
    folds case, deid.prefilter), and its digits can only be in a digit run of a text
    whose digits, all run together, hold them: a needle that passes that is checked by
    ``_hits_text`` or ``_hits_token`` as before, text by text."""

    __slots__ = ("casefolds", "digits", "needles")

    def __init__(self, needles: list[_Needle]) -> None:
        self.needles = needles
        self.casefolds = {needle.casefolded for needle in needles}
        self.digits = {needle.digits for needle in needles if needle.digits}

    def any_hit(self, texts: Iterable[str], tokens: Iterable[str], budget: Budget | None = None) -> bool:
        """Whether any needle is in any of ``texts`` (compared as text) or ``tokens``.

        Each needle costs a search of the whole message: spent from ``budget`` in chunks."""
        leaves = [_leaf(text) for text in texts]
        # No literal holds a line break (values are split at whitespace, and digits are
        # digits), so none can occur across two leaves joined by one.
        folded = "\n".join(leaf[1] for leaf in leaves)
        digits = "\n".join(leaf[2] for leaf in leaves)
        needles = self.needles
        for i, needle in enumerate(needles):
            if budget is not None and i % _NEEDLES_PER_SPEND == 0:
                budget.spend(min(_NEEDLES_PER_SPEND, len(needles) - i) * (len(folded) + len(digits)))
            if not (_holds(folded, needle.literals) or (needle.digits and needle.digits in digits)):
                continue
            for norm, leaf_folded, leaf_digits in leaves:
                if (
                    _holds(leaf_folded, needle.literals) or (needle.digits and needle.digits in leaf_digits)
                ) and _hits_text(needle, norm):
                    return True
        # A token hits only through a segment equal to a needle's digits, or to the needle
        # once casefolded (casefolding joined tokens casefolds each segment: "/" stays "/").
        joined = "/".join(tokens)
        if self.digits.isdisjoint(joined.split("/")) and self.casefolds.isdisjoint(
            joined.casefold().split("/")
        ):
            return False
        return any(self.token_hits(token) for token in tokens)

    def token_hits(self, token: str) -> list[_Needle]:
        return [needle for needle in self.needles if _hits_token(needle, token)]


def _holds(text: str, literals: tuple[str, ...]) -> bool:
    return all(map(text.__contains__, literals))


def _leaf_of(raw: str) -> tuple[str, str, str]:
    """(NFKC form, its sre case fold, its digits run together) of a value or key."""
    norm = phi.normalise_text(raw)
    return norm, prefilter.fold(norm), "".join(_DIGIT.findall(norm))


_leaf_cached = functools.lru_cache(maxsize=8192)(_leaf_of)


def _leaf(raw: str) -> tuple[str, str, str]:
    # Leaves recur message after message (units, codes, displays): prepared once.
    return _leaf_cached(raw) if len(raw) <= prefilter.MAX_CACHED_TEXT else _leaf_of(raw)


@functools.lru_cache(maxsize=8192)
def _date_valued(node: str) -> bool:
    # A full date value holds no name, and its digits are no id; a bare "4711" is
    # date-shaped too, so only values with a month are let through unchecked.
    return is_fhir_date(node) and "-" in node


def _collect(
    node: Any,
    parent: Mapping[str, Any] | None,
    key: str,
    texts: set[str],
    tokens: set[str],
) -> None:
    """Every key and value ``_leaves`` yields, without paths, into ``texts`` (compared as
    text) and ``tokens`` (ids and references)."""
    kind = type(node)
    if kind is dict:
        _collect_dict(node, texts, tokens)
    elif kind is list:
        for item in node:
            _collect(item, parent, key, texts, tokens)
    elif kind is str:
        _collect_str(node, parent, key, texts, tokens)
    elif kind is int or kind is float:
        texts.add(str(node))
    elif isinstance(node, Mapping):
        _collect_dict(node, texts, tokens)
    elif isinstance(node, list):
        for item in node:
            _collect(item, parent, key, texts, tokens)
    elif isinstance(node, str):
        _collect_str(node, parent, key, texts, tokens)
    elif isinstance(node, int | float) and not isinstance(node, bool):
        texts.add(str(node))


def _collect_dict(node: Mapping[Any, Any], texts: set[str], tokens: set[str]) -> None:
    # The common shapes (string, object, list of objects) without a call per value.
    for child_key, child in node.items():
        child_key = str(child_key)
        if child_key not in _POLICY_ELEMENT_NAMES:
            texts.add(child_key)
        kind = type(child)
        if kind is str:
            _collect_str(child, node, child_key, texts, tokens)
        elif kind is dict:
            _collect_dict(child, texts, tokens)
        elif kind is list:
            for item in child:
                if type(item) is dict:
                    _collect_dict(item, texts, tokens)
                else:
                    _collect(item, node, child_key, texts, tokens)
        else:
            _collect(child, node, child_key, texts, tokens)


def _collect_str(
    node: str, parent: Mapping[str, Any] | None, key: str, texts: set[str], tokens: set[str]
) -> None:
    if key in _STRUCTURAL_KEYS:
        return
    if key in _TOKEN_KEYS or (
        key == "value" and parent is not None and parent.get("system") == PSEUDONYM_SYSTEM
    ):
        tokens.add(node)
    elif not _date_valued(node):
        texts.add(node)


def _safe_path(path: str, needles: list[_Needle]) -> str:
    # Element names are safe to report; anything else in the path might itself be the value.
    def safe(part: str) -> bool:
        if not part or part == "." or re.fullmatch(r"\[\d+\]", part):
            return True
        return _SAFE_KEY.fullmatch(part) is not None and not any(_hits_text(n, part) for n in needles)

    return "".join(part if safe(part) else "?" for part in re.split(r"(\.|\[\d+\])", path))


def _leaves(
    node: Any, path: str, parent: Mapping[str, Any] | None, key: str
) -> Iterator[tuple[str, str, str]]:
    """(path, key-or-value text, mode) for everything the serialised JSON would contain."""
    if isinstance(node, Mapping):
        for child_key, child in node.items():
            child_key = str(child_key)
            # Element names the policy allows are vocabulary, not data: checking them made a
            # patient literally named "Patient" fail on `patient`. Any other key is checked.
            if child_key not in _POLICY_ELEMENT_NAMES:
                yield f"{path}.{child_key}", phi.normalise_text(child_key), "key"
            yield from _leaves(child, f"{path}.{child_key}", node, child_key)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _leaves(item, f"{path}[{i}]", parent, key)
    elif isinstance(node, str):
        is_pseudonym = key == "value" and parent is not None and parent.get("system") == PSEUDONYM_SYSTEM
        if key in _STRUCTURAL_KEYS:
            return
        if key in _TOKEN_KEYS or is_pseudonym:
            yield path, node, "token"
        # A full date value holds no name, and its digits are no id; a bare "4711" is
        # date-shaped too, so only values with a month are let through unchecked.
        elif not (is_fhir_date(node) and "-" in node):
            yield path, phi.normalise_text(node), "text"
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield path, str(node), "text"


def check_no_leak(
    resources: list[dict[str, Any]], phi_values: dict[str, str], *, budget: Budget | None = None
) -> None:
    """Raise IdentifierLeak if any phi value occurs in ``resources``.

    Values are compared after NFKC and case folding; values of kind ID or PHONE with
    seven or more digits are also compared digits-only against digit runs, so
    "555 123 4567" still matches "(555) 123-4567". ``budget``: the message's (deid.budget),
    which the searches are spent from.
    """
    needles = _needles(phi_values)
    if not needles:
        return
    if not isinstance(resources, list | tuple):
        resources = list(resources)  # walked twice when something is found
    # All of the message at once first: most messages are clean, and this clears them.
    texts: set[str] = set()
    tokens: set[str] = set()
    for resource in resources:
        _collect(resource, None, "", texts, tokens)
    if not _Search(needles).any_hit(texts, tokens, budget):
        return
    # Something was found: leaf by leaf, to say where.
    findings: set[tuple[str, str]] = set()
    for index, resource in enumerate(resources):
        resource_type = resource.get("resourceType") if isinstance(resource, Mapping) else None
        root = resource_type if isinstance(resource_type, str) else "Resource"
        for path, text, mode in _leaves(resource, root, None, ""):
            if budget is not None:
                budget.spend(len(text) * len(needles))
            runs = _digit_runs(text) if mode != "token" and any(n.digits for n in needles) else []
            for needle in needles:
                hit = _hits_token(needle, text) if mode == "token" else _hits_text(needle, text, runs)
                if hit:
                    findings.add((needle.kind, f"resources[{index}] {_safe_path(path, needles)}"))
    if findings:
        ordered = sorted(findings, key=lambda f: (f[1], f[0]))
        shown = "; ".join(f"{kind} in {where}" for kind, where in ordered[:_MAX_REPORTED])
        more = f"; and {len(ordered) - _MAX_REPORTED} more" if len(ordered) > _MAX_REPORTED else ""
        kinds = ", ".join(sorted({kind for kind, _ in findings}))
        raise IdentifierLeak(f"identifier leak ({kinds}): {shown}{more}")
