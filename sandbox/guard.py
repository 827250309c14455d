"""The PHI guard: the last check before text leaves for a model, and before a model's
answer is stored. De-identification upstream should make it redundant; it exists for
the day it is not (a new feed, a new free-text field).

Patterns only, on purpose: the sandbox knows no identifiers (it holds no access to the
identified zone), so it cannot look for known values; the identified zone does that on
the sandbox's request (sandbox.screen), right after this guard. Patterns are chosen to
fire on identifier shapes and not on lab values, shifted dates or LOINC codes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),
    "cn-resident-id": re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)"),
    "cn-mobile": re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)"),
    "us-ssn": re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)"),
    "phone": re.compile(r"(?<![\d.])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?![\d.])"),
    "url": re.compile(r"https?://\S+", re.IGNORECASE),
    "ip-address": re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"),
    # Latin letters around, not \b: after a Chinese character "MRN" starts no \w boundary.
    "mrn-label": re.compile(
        r"(?<![A-Za-z])(?:MRN|medical record (?:no|number)|(?:住院|门诊|病案|病历|就诊卡|医保|身份证)号?码?)"
        r"(?![A-Za-z])\s*[:#：]?\s*[A-Za-z]*\d[\w-]*",
        re.IGNORECASE,
    ),
    "long-number": re.compile(r"(?<![\d.])\d{9,}(?![\d.])"),
}


@dataclass(frozen=True)
class GuardFinding:
    kind: str
    offset: int


class PromptLeak(Exception):
    """Raised with the kinds found, never with the matched text."""

    code = "prompt-leak"

    def __init__(self, findings: list[GuardFinding]) -> None:
        kinds = sorted({f.kind for f in findings})
        super().__init__(f"identifier-shaped text in prompt: {', '.join(kinds)}")
        self.findings = findings


def scan(text: str) -> list[GuardFinding]:
    return [GuardFinding(kind, m.start()) for kind, rx in _PATTERNS.items() for m in rx.finditer(text)]


def check(text: str) -> None:
    findings = scan(text)
    if findings:
        raise PromptLeak(findings)
