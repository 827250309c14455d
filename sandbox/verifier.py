"""The verifier: every sentence of a summary checked against the facts it cites, and only those.

Deterministic and lexical on purpose: it must give the same verdict in the model zone and
in the identified zone, explain each refusal in a line a model (and an auditor) can act
on, and run in milliseconds. What it checks, per sentence (sandbox.claims reads them):

- citations: at least one, each an id of the prompt;
- numbers with their comparators and units (mmol/L = mmol/l, 10*3/uL = 10^3/µL): each in a
  cited fact; a number found only in an uncited fact is a wrong citation;
- dates (ISO, 2026/03/27, March 27, 2026, 2026年3月27日): each a date of a cited fact;
- high/low/abnormal/normal words (and 偏高/偏低/异常/正常) against the cited facts' flags;
- negation (no, without, negative, 未见, 否认, 阴性 ...) and certainty (possible, 考虑 ...):
  a term the facts only deny cannot be affirmed, one they affirm cannot be denied, one they
  only suspect cannot be stated as certain;
- clinical terms: every content word (every Chinese character pair) must be in a cited fact;
- identifier shapes (sandbox.guard).

And per summary, the omission rule: every abnormal fact is cited by some sentence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox import guard
from sandbox.answer import Sentence
from sandbox.claims import Claims, Quantity, read_claims, uncovered
from sandbox.facts import Fact, number_facts, resource_facts

__all__ = ["VERIFIER", "Failure", "Report", "verify", "verify_stored"]

VERIFIER = "sidecar-verifier/1"
_CJK = re.compile(r"[\u4e00-\u9fff]")
_HIGH_FLAGS = frozenset({"H", "HH", "HU", ">"})
_LOW_FLAGS = frozenset({"L", "LL", "LU", "<"})
_CRITICAL_FLAGS = frozenset({"HH", "LL", "AA"})
_NORMAL_FLAGS = frozenset({"N", "NEG", "ND"})


@dataclass(frozen=True)
class Failure:
    sentence: int  # 1-based; 0 for the summary as a whole (omission)
    code: (
        str  # citation, value, unit, comparator, date, flag, negation, certainty, term, identifier, omission
    )
    detail: str

    def __str__(self) -> str:
        where = f"sentence {self.sentence}" if self.sentence else "summary"
        return f"{where}: {self.detail}"


@dataclass(frozen=True)
class Report:
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def code(self) -> str:
        """The job's failure code: ``ungrounded`` if any sentence failed, else ``omission``."""
        return "ungrounded" if any(f.code != "omission" for f in self.failures) else "omission"

    @property
    def messages(self) -> list[str]:
        return [str(f) for f in self.failures]

    @property
    def codes(self) -> set[str]:
        return {f.code for f in self.failures}


def verify(sentences: Sequence[Sentence], facts: Sequence[Fact]) -> Report:
    by_id = {fact.id: fact for fact in facts}
    claims_of: dict[str, Claims] = {}

    def claims(fact: Fact) -> Claims:
        if fact.id not in claims_of:
            claims_of[fact.id] = read_claims(fact.text, fact=True)
        return claims_of[fact.id]

    failures: list[Failure] = []
    cited_ids: set[str] = set()
    for number, sentence in enumerate(sentences, start=1):
        cited = [by_id[i] for i in dict.fromkeys(sentence.facts) if i in by_id]
        cited_ids.update(f.id for f in cited)
        unknown = [i for i in sentence.facts if i not in by_id]
        if not sentence.facts:
            failures.append(Failure(number, "citation", "cites no fact"))
            continue
        if unknown:
            failures.append(Failure(number, "citation", f"cites unknown fact(s) {', '.join(unknown[:5])}"))
            continue
        others = [f for f in facts if f.id not in sentence.facts]
        failures.extend(
            _check_sentence(
                number, read_claims(sentence.text), cited, [claims(f) for f in cited], others, claims
            )
        )
    omitted = [f.id for f in facts if f.abnormal and f.id not in cited_ids]
    if omitted:
        failures.append(
            Failure(0, "omission", f"abnormal fact(s) {', '.join(omitted[:10])} cited by no sentence")
        )
    return Report(failures)


def verify_stored(
    sentences: Sequence[Mapping[str, Any]], resources: Mapping[str, dict[str, Any]], language: str
) -> Report:
    """The identified zone's check of a stored summary: ``sentences`` cite versioned
    references (``Observation/x/_history/2``); ``resources`` maps every input version shown
    to the model to its body. The facts are rendered again from those versions."""
    facts = number_facts(fact for r in resources.values() for fact in resource_facts(r, language))
    ids: dict[str, list[str]] = {}
    for fact in facts:
        ids.setdefault(fact.reference, []).append(fact.id)
    parsed: list[Sentence] = []
    for s in sentences:
        cited: list[str] = []
        for ref in s.get("facts", []):
            cited.extend(ids.get(str(ref), [f"?{ref}"]))
        parsed.append(Sentence(str(s.get("text", "")), tuple(cited)))
    return verify(parsed, facts)


def _check_sentence(
    number: int,
    said: Claims,
    cited: list[Fact],
    known: list[Claims],
    others: list[Fact],
    claims_of: Callable[[Fact], Claims],
) -> list[Failure]:
    failures: list[Failure] = []
    if not (said.terms or said.quantities or said.date_claims or said.flags or said.cjk_runs or said.times):
        # "F1", "[F2]", "." cite facts and say nothing: nothing to store.
        return [Failure(number, "empty", "says nothing (no words, values or dates)")]
    if guard.scan(said.text):
        failures.append(Failure(number, "identifier", "has identifier-shaped text"))
    failures.extend(_check_quantities(number, said, known, others, claims_of))
    failures.extend(_check_dates(number, said, known))
    failures.extend(_check_flags(number, said, cited, known))
    failures.extend(_check_terms(number, said, known))
    return failures


def _unit_matches(q: Quantity, same_value: list[Quantity]) -> bool:
    """A unit said must be the cited value's unit. Where the facts give that value no unit
    at all (a bare reference range, a count), any unit passes: there is nothing to check."""
    if q.unit is None:
        return True
    with_unit = [k for k in same_value if k.unit is not None]
    return not with_unit or any(k.unit == q.unit for k in with_unit)


def _check_quantities(
    number: int, said: Claims, known: list[Claims], others: list[Fact], claims_of: Callable[[Fact], Claims]
) -> list[Failure]:
    failures: list[Failure] = []
    facts_q = [q for c in known for q in c.quantities]
    years = {d[0] for c in known for d in c.dates}
    for q in said.quantities:
        same_value = [k for k in facts_q if k.value == q.value]
        if not same_value:
            if q.unit is None and q.comparator is None and q.value.isdigit() and q.value in years:
                continue  # a year of a cited date ("in 2026")
            holders = [o.id for o in others if any(k.value == q.value for k in claims_of(o).quantities)]
            if holders:
                # Named, so that the model (asked once more) can cite the right fact.
                where = ", ".join(holders[:3])
                failures.append(
                    Failure(number, "citation", f"{q} is in {where}, which the sentence does not cite")
                )
            else:
                failures.append(Failure(number, "value", f"{q} is in none of the facts it cites"))
            continue
        if not _unit_matches(q, same_value):
            failures.append(Failure(number, "unit", f"{q}: the cited fact has another unit"))
        elif not any(q.comparator == k.comparator for k in same_value if _unit_matches(q, [k])):
            failures.append(Failure(number, "comparator", f"{q}: the cited fact has another comparator"))
    for t in said.times:
        if not any(t in c.times for c in known):
            failures.append(Failure(number, "value", f"time {t} is in none of the facts it cites"))
    return failures


def _date_matches(date: tuple[str | None, str | None, str | None], day: tuple[str, str, str]) -> bool:
    return all(part is None or part == known for part, known in zip(date, day, strict=True))


def _check_dates(number: int, said: Claims, known: list[Claims]) -> list[Failure]:
    days = [d for c in known for d in c.dates]
    failures = []
    for alternatives, shown in said.date_claims:
        if not any(_date_matches(alt, day) for alt in alternatives for day in days):
            failures.append(Failure(number, "date", f"date {shown} is in none of the facts it cites"))
    return failures


def _flag_supported(direction: str, negated: bool, facts: list[tuple[Fact, Claims]]) -> bool:
    """Is "high" (or "not high", "normal", ...) what these facts say?"""
    for fact, claims in facts:
        flag = fact.flag
        if direction == "high":
            yes = flag in _HIGH_FLAGS or "high" in claims.flag_words
        elif direction == "low":
            yes = flag in _LOW_FLAGS or "low" in claims.flag_words
        elif direction == "critical":
            yes = flag in _CRITICAL_FLAGS or "critical" in claims.flag_words
        elif direction == "abnormal":
            yes = (flag is not None and flag not in _NORMAL_FLAGS) or bool(
                {"abnormal", "critical"} & claims.flag_words
            )
        else:  # normal
            yes = flag in _NORMAL_FLAGS or "normal" in claims.flag_words or "abnormal" in claims.denied_flags
        if negated and direction in claims.denied_flags:
            return True  # "no abnormality" where the fact says so
        if negated:
            # "not high" is what a fact says when it is not flagged high (a normal or low value).
            if direction in ("high", "low", "critical", "abnormal"):
                yes = not yes and (flag is not None or bool(claims.flag_words) or bool(claims.quantities))
            else:
                yes = not yes and flag is not None
        if yes:
            return True
    return False


def _check_flags(number: int, said: Claims, cited: list[Fact], known: list[Claims]) -> list[Failure]:
    failures = []
    pairs = list(zip(cited, known, strict=True))
    for claim in said.flags:
        # The flag word speaks of the values of its own clause, if it has any.
        near = [
            (f, c)
            for f, c in pairs
            if any(k.value == q.value for q in claim.quantities for k in c.quantities)
        ]
        if not _flag_supported(claim.direction, claim.negated, near or pairs):
            said_as = ("not " if claim.negated else "") + claim.direction
            failures.append(Failure(number, "flag", f'"{said_as}" is not what the cited fact flags'))
    return failures


def _check_terms(number: int, said: Claims, known: list[Claims]) -> list[Failure]:
    failures = []
    every = set().union(*(c.terms for c in known)) if known else set()
    missing = [t for t in said.terms if not _CJK.search(t) and t not in every]
    written = "\n".join(c.normal for c in known)
    missing += [stretch for run in said.cjk_runs for stretch in uncovered(run, written)]
    if missing:
        failures.append(Failure(number, "term", f"says {', '.join(missing[:5])}, which no cited fact says"))
    flipped: dict[str, list[str]] = {}
    for term, polarities in said.polarities.items():
        seen = {p for c in known for p in c.polarities.get(term, ())}
        if not seen:
            continue  # not in the cited facts: the term check above has said so
        if seen == {"instruction"}:
            flipped.setdefault("rests on record text that reads as an instruction", []).append(term)
            continue
        for polarity in polarities - seen:
            if polarity == "affirmed" and seen == {"negated"}:
                flipped.setdefault("affirms what the cited facts deny", []).append(term)
            elif polarity == "negated" and "negated" not in seen:
                flipped.setdefault("denies what the cited facts affirm", []).append(term)
            elif polarity == "affirmed" and seen == {"uncertain"}:
                flipped.setdefault("states as certain what the cited facts only suspect", []).append(term)
    for what, terms in flipped.items():
        code = (
            "certainty"
            if what.startswith("states")
            else "instruction"
            if what.startswith("rests")
            else "negation"
        )
        failures.append(Failure(number, code, f"{what}: {', '.join(terms[:5])}"))
    return failures
