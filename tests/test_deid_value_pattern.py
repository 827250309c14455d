"""phi.ValuePattern checks its edges in Python; it must match exactly what the
look-around regex it stands for (its ``pattern`` text) matches, on any text."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from deid import phi

# Edges of every kind: Latin (with accents), Greek, Cyrillic, CJK, digits, spaces, marks.
ALPHABET = st.sampled_from([*"aAnNsS01 9éÉ\u0394\u0436王芳-._\t", "Ann", "ann", "王芳", "4711", "  "])
VALUES = ["Ann", "ann smith", "Ann Ann", "王芳", "4711", "MRN4711", "J. Smith", "é9", "a-b", "Жанна", "9 Ann"]


@settings(max_examples=400, deadline=None)
@given(
    text=st.lists(ALPHABET, max_size=14).map("".join),
    value=st.sampled_from(VALUES),
    bound_digits=st.booleans(),
)
def test_value_pattern_matches_like_its_look_around_form(text: str, value: str, bound_digits: bool) -> None:
    fast = phi.value_pattern(value, bound_digits=bound_digits)
    reference = re.compile(fast.pattern, re.IGNORECASE)
    assert fast.sub("[X]", text) == reference.sub("[X]", text)
    assert [m.span() for m in fast.finditer(text)] == [m.span() for m in reference.finditer(text)]
    assert (fast.search(text) is None) == (reference.search(text) is None)


def test_a_rejected_match_does_not_hide_a_later_overlapping_one() -> None:
    # "xAnn Ann Ann": the first "Ann Ann" continues a word; the one after it does not.
    fast = phi.value_pattern("Ann Ann", bound_digits=False)
    assert fast.sub("[X]", "xAnn Ann Ann.") == "xAnn [X]."
