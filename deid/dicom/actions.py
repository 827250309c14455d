"""The PS3.15 Basic Application Level Confidentiality Profile as decisions: which action
applies to a public attribute under the options chosen (``resolve_action``), and the plan
for a (tag, VR) that the walk (``deid.dicom.deidentify``) follows. No dataset is touched
here: the table is ``profile_table``, the walk and the byte-level copy are elsewhere.

Codes as the profile table has them: X remove, Z empty (or dummy), D dummy, K keep, C clean,
U replace the UID; combined codes (``Z/D``) take the strictest; SHIFT moves a date by the
patient's offset and RECURSE keeps a sequence and applies the profile to its items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple

from pydicom.datadict import dictionary_has_tag, keyword_for_tag

from core.errors import DeidError

from . import values
from .profile_table import ACTIONS, OPTION_COLUMNS, RANGES

__all__ = [
    "COL",
    "RECURSE",
    "SHIFT",
    "TEXT_VRS",
    "C",
    "D",
    "DicomOptions",
    "K",
    "Plan",
    "U",
    "X",
    "Z",
    "pick",
    "plan_for",
    "resolve_action",
    "row_of",
]  # fmt: skip


@dataclass(frozen=True)
class DicomOptions:
    """Which PS3.15 options apply on top of the Basic Profile."""

    retain_longitudinal_modified_dates: bool = True
    """Shift dates by the patient's vault shift instead of removing them."""
    retain_patient_characteristics: bool = False
    """Keep sex, age (over 89 pooled to 090Y), size, weight, smoking and pregnancy status..."""
    clean_descriptors: bool = True
    """Descriptions through the text scrubber instead of removal where the table says C."""
    retain_safe_private: bool = False
    """Keep private attributes on ``private.SAFE_PRIVATE``; all others are removed anyway."""
    allow_burned_in: bool = False
    """Site rule: release images that may carry burned-in text (see ``burned_in_risk``)."""


# Resolved actions. SHIFT = move the date by the patient's offset; RECURSE = keep a
# sequence and apply the profile to its items.
X, Z, D, K, C, U, SHIFT, RECURSE = "X", "Z", "D", "K", "C", "U", "SHIFT", "RECURSE"

COL = {name: i + 1 for i, name in enumerate(OPTION_COLUMNS)}
TEXT_VRS: Final = frozenset(values.TEXT_MAX)
_DATE_VRS: Final = frozenset({"DA", "DT", "TM"})
_FREETEXT_VRS: Final = frozenset({"ST", "LT", "UT", "UC"})


def row_of(tag: int) -> tuple[str, ...] | None:
    row = ACTIONS.get(tag)
    if row is not None:
        return row
    for mask, value, codes in RANGES:
        if tag & mask == value:
            return codes
    return None


def pick(code: str) -> str:
    """One action out of a (possibly combined) basic-profile code; see the module doc."""
    choices = code.split("/")
    for choice in ("U*", D, Z, X, K, C, U):
        if choice in choices:
            return RECURSE if choice == "U*" else choice
    raise DeidError(f"unknown profile action code {code!r}")


def resolve_action(tag: int, vr: str, options: DicomOptions, *, can_shift: bool) -> str:
    """The action for a public attribute: X, Z, D, K, C, U, SHIFT or RECURSE.

    ``can_shift``: the patient has a date shift and the modified-dates option is on.
    Option columns override the basic profile; among enabled options a K for patient
    characteristics comes first, then date modification, then description cleaning.
    """
    row = row_of(tag)
    if row is None:
        return RECURSE if vr == "SQ" else K
    chars = row[COL["retain_patient_chars"]] if options.retain_patient_characteristics else ""
    dates = row[COL["retain_long_modif_dates"]]
    desc = row[COL["clean_desc"]] if options.clean_descriptors else ""
    if chars == K:
        action = K
    elif dates == C and options.retain_longitudinal_modified_dates and can_shift and vr in _DATE_VRS:
        action = SHIFT
    elif C in (chars, desc):
        action = C
    else:
        action = pick(row[0])
    if vr == "SQ":
        # A sequence is never "dummied" or "cleaned" as a whole: its items go through
        # the profile. Z empties it; X removes it.
        return action if action in (X, Z) else RECURSE
    if action == C and vr in _DATE_VRS:
        return SHIFT if can_shift else pick(row[0])
    if action == C and vr not in TEXT_VRS:
        # Nothing to clean in a number or a binary blob (Exif maker notes): the basic
        # action applies.
        action = pick(row[0])
    if action == U and vr != "UI":
        return D
    if action == SHIFT and vr not in _DATE_VRS:
        return pick(row[0])
    return action


class Plan(NamedTuple):
    """What happens to one public attribute; resolved once per (tag, VR) and options."""

    action: str
    """``resolve_action``'s answer."""
    nested: str
    """The action inside a sequence whose basic action is D (unlisted text and names)."""
    phi: str | None
    """The scrubber phi kind of the value, when the action removes or replaces it; "SQ"
    for a removed or emptied sequence, whose items may hold such values."""
    replaced: bool
    """A sequence whose basic action includes D: the nested rule applies to its items."""


PlanTable = dict[tuple[int, str], Plan]
# (options, can_shift) -> {(tag, VR): plan}, filled on first sight of each attribute.
# Bounded, since public tags and VRs are finite, but cleared past a size all the same.
_PLANS: dict[tuple[DicomOptions, bool], PlanTable] = {}
_PLANS_MAX: Final = 50_000


def plan_table(options: DicomOptions, can_shift: bool) -> PlanTable:
    table = _PLANS.get((options, can_shift))
    if table is None or len(table) > _PLANS_MAX:
        table = _PLANS[(options, can_shift)] = {}
    return table


def _make_plan(tag: int, vr: str, options: DicomOptions, can_shift: bool) -> Plan:
    action = resolve_action(tag, vr, options, can_shift=can_shift)
    row = row_of(tag)
    nested = action
    if action == K and row is None:
        # Inside a sequence the profile says to replace (D: Content Sequence, Graphic
        # Annotation Sequence...), unlisted free text such as an SR Text Value
        # (0040,A160) is report prose: cleaned like a descriptor, or replaced.
        if vr in _FREETEXT_VRS:
            nested = C if options.clean_descriptors else D
        elif vr == "PN":
            nested = D
    replaced = action == RECURSE and row is not None and D in row[0].split("/")
    return Plan(action, nested, _phi_kind(tag, vr, action), replaced)


def _phi_kind(tag: int, vr: str, action: str) -> str | None:
    if action not in (X, Z, D):
        return None
    if vr == "SQ":
        return "SQ"
    if vr == "PN":
        return "NAME"
    if vr in ("DA", "DT"):
        return "DATE"
    # CS is left out: coded values ("M", "ALTERED") are vocabulary, not identifiers, and
    # would only blank ordinary words in descriptions.
    if vr in TEXT_VRS or vr in ("AE", "UR"):
        keyword = (keyword_for_tag(tag) if dictionary_has_tag(tag) else "").lower()
        if "telephone" in keyword or "telecom" in keyword:
            return "PHONE"
        if "address" in keyword:
            return "ADDRESS"
        return "ID"
    return None


def plan_for(tag: int, vr: str, options: DicomOptions, can_shift: bool) -> Plan:
    """The plan for ``(tag, vr)`` under ``options``, resolved once and remembered."""
    table = plan_table(options, can_shift)
    plan = table.get((tag, vr))
    if plan is None:
        plan = table[(tag, vr)] = _make_plan(tag, vr, options, can_shift)
    return plan
