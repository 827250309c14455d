"""The pre-checks of deid.prefilter never rule out a text a pattern could match.

The scrubber and the leak check skip a known value's pattern for a text that does not
hold the value's literal parts, compared in sre's case fold. That is only sound if the
fold is sre's (every pair of characters ``re.IGNORECASE`` matches folds alike) and every
rule's literals really are in whatever its pattern matches; both are checked here.
"""

from __future__ import annotations

import random
import re
from datetime import date, timedelta

import pytest

from deid import phi, prefilter
from deid.dates import written_forms
from deid.scrub import Scrubber, _date_rule, _names
from sidecar import hospital


def _cased() -> list[str]:
    """Every character that has a case mapping or is one (the only ones IGNORECASE can
    match with another)."""
    return [
        c
        for c in map(chr, range(0x110000))
        if not 0xD800 <= ord(c) <= 0xDFFF and (c.lower() != c or c.upper() != c)
    ]


def test_the_fold_is_the_one_ignorecase_matches_with() -> None:
    cased = _cased()
    haystack = "".join(cased)
    for char in cased:
        for match in re.finditer(re.escape(char), haystack, re.IGNORECASE):
            assert prefilter.fold(match.group()) == prefilter.fold(char), (char, match.group())


def test_ascii_folds_as_str_lower_and_the_fold_keeps_lengths() -> None:
    assert all(prefilter.fold(chr(c) + "\u00e9")[0] == chr(c).lower() for c in range(128))
    for text in ["SMİTH ſtraße", "Kelvin \u212a", "王芳", "ΣΑΣ ς", "\U000f0000x"]:
        assert len(prefilter.fold(text)) == len(text)
        assert prefilter.fold(text) == "".join(prefilter.fold(c) for c in text)


def test_private_use() -> None:
    assert prefilter.has_private_use("a\U000f0000")
    assert prefilter.has_private_use("\U0010ffff")
    assert not prefilter.has_private_use("abc 王芳 \uf8ff")


def _days() -> list[date]:
    rng = random.Random(3)
    edges = [date(1850, 1, 1), date(1850, 12, 31), date(2199, 12, 31), date(2000, 2, 29), date(1969, 1, 9)]
    return edges + [date(1850, 1, 1) + timedelta(days=rng.randrange(0, 350 * 365)) for _ in range(400)]


@pytest.mark.parametrize("day", _days())
def test_every_written_form_of_a_known_date_holds_its_literals(day: date) -> None:
    rule = _date_rule(day)
    assert rule.triggers is not None
    pattern = rule.pattern.get()
    for form in written_forms(day):
        # The rule's pattern matches the form (as written, and with its spaces dropped).
        for text in (form, "".join(form.split())):
            match = pattern.search(f"x {text} y")
            assert match is not None, (day, text)
            folded = prefilter.fold(match.group())
            assert any(all(literal in folded for literal in trigger) for _, trigger in rule.triggers), form


def _feed_phi_values() -> list[dict[str, str]]:
    from mapping import MappingOptions, map_message

    out = []
    for raw in hospital.feed(hospital.make_patients(30)):
        out.append(map_message(raw.decode(), MappingOptions(validate=False)).phi_values)
    out += [
        {"Smith, John": "NAME", "John Q Smith": "NAME", "19760412": "DATE"},
        {"王, 芳": "NAME", "王芳": "NAME", "欧阳, 建国": "NAME"},
        {"O'Neil-Burke, Mary Ann": "NAME", "ſmith, İvan": "NAME"},
    ]
    return out


def _texts(phi_values: dict[str, str], rng: random.Random) -> list[str]:
    pieces = [*phi_values, "Dr. ", "pt ", "initials ", "先生", "老", "小", "某", ", ", " ", ".", "/"]
    for value in phi_values:
        pieces += [value.upper(), value.lower(), value.replace(" ", "\t")]
        if "," in value:
            family, given = (p.strip() for p in value.split(",", 1))
            pieces += [f"{given[:1]}. {family}", f"{family}, {given[:1]}.", given[:1] + family[:1]]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))) for _ in range(60)]


def test_every_rule_match_holds_the_rules_literals() -> None:
    # For every rule of real messages' scrubbers: wherever its pattern matches, the folded
    # match holds all literals of one of its triggers (so the text does too).
    rng = random.Random(11)
    checked = 0
    for phi_values in _feed_phi_values():
        scrubber = Scrubber(phi_values)
        rules = [rule for rule in scrubber._rules if rule.triggers is not None]
        for text in _texts(phi_values, rng):
            for rule in rules:
                pattern = rule.pattern.get()
                for match in pattern.finditer(text):
                    folded = prefilter.fold(match.group())
                    assert any(all(s in folded for s in trigger) for _, trigger in rule.triggers or ()), (
                        rule.pattern.pattern,
                        match.group(),
                    )
                    checked += 1
    assert checked >= 500


def test_known_surnames_are_triggers() -> None:
    names = _names(("王, 芳", "王芳"))
    assert names.surnames == {"王"}
    assert names.index == (("", ("王",)),)  # one character: compared with every text


@pytest.mark.parametrize("targets", [0, 3, 20, 120])  # searched one by one, or looked up by pieces
def test_the_index_finds_what_a_search_for_every_literal_finds(targets: int) -> None:
    rng = random.Random(targets)
    alphabet = "abcAB王芳 1-2.ſ\u212a"
    for _ in range(60):
        triggers = [
            (i, [tuple("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(2))])
            for i in range(targets)
        ]
        index = prefilter.LiteralIndex((i, prefilter.prepare(t)) for i, t in triggers)
        for length in (0, 5, 30, prefilter.MAX_CACHED_TEXT + 20):
            folded = prefilter.fold("".join(rng.choice(alphabet) for _ in range(length)))
            found = {i for i, ts in triggers if any(all(prefilter.fold(s) in folded for s in t) for t in ts)}
            assert set(index.live(folded)) == found


def test_value_literals_are_the_parts_value_pattern_matches() -> None:
    for value in ["John  Smith", "MRN 12345", "(555) 123-4567", "王芳", "a b c"]:
        pattern = phi.value_pattern(value, bound_digits=False)
        text = f"x {value.upper()} y"
        match = pattern.search(text)
        assert match is not None
        assert all(prefilter.fold(part) in prefilter.fold(match.group()) for part in value.split())
