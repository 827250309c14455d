"""Grounding check: every number in a summary must occur in the prompt it came from.

A model that invents a potassium of 6.1 is worse than no summary; numbers are the facts
that are cheapest to check mechanically.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w])")


class UngroundedSummary(Exception):
    code = "ungrounded"


def ungrounded_numbers(summary: str, prompt: str) -> list[str]:
    known = set(_NUMBER.findall(prompt))
    return [n for n in _NUMBER.findall(summary) if n not in known]


def check(summary: str, prompt: str) -> None:
    missing = ungrounded_numbers(summary, prompt)
    if missing:
        raise UngroundedSummary(f"{len(missing)} number(s) in the summary are not in the record")
