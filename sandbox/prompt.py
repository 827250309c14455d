"""Prompt rendering: de-identified resources → the text a model reads.

The prompt is plain clinical lines, one fact per line, so that the PHI guard can read
it and the grounding check can trace every number of the answer back to a line.
Resource ids (pseudonymous) are not put in the prompt: the model needs no ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROMPT_VERSION = "patient-summary/1"

INSTRUCTIONS = (
    "Summarise the de-identified clinical record below for a clinician in at most eight lines. "
    "Lead with abnormal findings. Use only facts from the record."
)


@dataclass(frozen=True)
class Prompt:
    version: str
    instructions: str
    facts: tuple[str, ...]  # one line per fact, most relevant first

    @property
    def text(self) -> str:
        return self.instructions + "\n\nRecord:\n" + "\n".join(f"- {line}" for line in self.facts)


def _concept(cc: dict[str, Any] | None) -> str:
    if not cc:
        return "unspecified"
    if cc.get("text"):
        return str(cc["text"])
    for coding in cc.get("coding", []):
        if coding.get("display"):
            return str(coding["display"])
    codes = [str(c.get("code")) for c in cc.get("coding", []) if c.get("code")]
    return codes[0] if codes else "unspecified"


def _value(obs: dict[str, Any]) -> str:
    if "valueQuantity" in obs:
        q = obs["valueQuantity"]
        return f"{q.get('comparator', '')}{q.get('value', '')} {q.get('unit', q.get('code', ''))}".strip()
    if "valueString" in obs:
        return str(obs["valueString"])
    if "valueCodeableConcept" in obs:
        return _concept(obs["valueCodeableConcept"])
    for key in ("valueDateTime", "valueBoolean", "valueInteger"):
        if key in obs:
            return str(obs[key])
    return "no value"


def _flag(obs: dict[str, Any]) -> str | None:
    for cc in obs.get("interpretation", []):
        for coding in cc.get("coding", []):
            code = coding.get("code")
            if code and code not in ("N",):
                return str(code)
    return None


def observation_line(obs: dict[str, Any]) -> str:
    line = f"{_concept(obs.get('code'))}: {_value(obs)}"
    flag = _flag(obs)
    if flag:
        line += f" (flag {flag})"
    ranges = obs.get("referenceRange") or []
    if ranges and ranges[0].get("text"):
        line += f" [ref {ranges[0]['text']}]"
    when = obs.get("effectiveDateTime")
    if when:
        line += f" on {str(when)[:10]}"
    return line


def build_prompt(resources: list[dict[str, Any]]) -> Prompt:
    facts: list[str] = []
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    for patient in by_type.get("Patient", []):
        born = str(patient.get("birthDate", "unknown"))[:4]
        facts.append(f"Patient: {patient.get('gender', 'unknown')} sex, born {born}")
    for enc in by_type.get("Encounter", []):
        cls = enc.get("class", {}).get("code", "unknown")
        start = str(enc.get("period", {}).get("start", ""))[:10]
        facts.append(
            f"Encounter: class {cls}, status {enc.get('status')}" + (f", from {start}" if start else "")
        )
    for rep in by_type.get("DiagnosticReport", []):
        line = f"Report {_concept(rep.get('code'))}: {rep.get('status')}"
        if rep.get("conclusion"):
            line += f"; conclusion: {rep['conclusion']}"
        facts.append(line)
    observations = by_type.get("Observation", [])
    # Abnormal first, each group most recent first: what a clinician reads first.
    # (Two stable sorts, because ISO date strings cannot be negated in one key.)
    observations.sort(key=lambda o: str(o.get("effectiveDateTime", "")), reverse=True)
    observations.sort(key=lambda o: _flag(o) is None)
    facts.extend(observation_line(o) for o in observations)
    return Prompt(PROMPT_VERSION, INSTRUCTIONS, tuple(facts))
