"""HL7 v2 update semantics for resources that later messages describe only in part.

A lab result, an order or a schedule message carries a PID (and often a PV1) to say whom
and which visit it is about, usually with a few fields only: the MRN, perhaps the name.
Mapped alone, that gives a Patient without birth date, sex or address, and storing it as
the new version would erase what the admission reported. HL7 v2 (chapter 2, "null values
in fields") says a field that is not present in an update means "no change"; only the
explicit null ``""`` means "delete". So for the resources messages keep restating — Patient
from PID, Encounter from PV1 — a new version takes each top-level element the message has,
drops those the message nulls (``clear``, from ``MappedMessage.cleared``) and keeps the
stored one where the message has none. Everything else (results, reports, orders) is
restated whole by the message that sends it and is replaced as it comes.

An Encounter's status is patient administration's to change: the status the mapper derives
for a lab result's PV1 (from the patient class, else "in-progress") is an inference, and a
result that arrives after the discharge must not reopen the visit. So unless the message
is an ADT event, the caller keeps the stored status (``keep``, ``ADMINISTERED``).
"""

from __future__ import annotations

from typing import Any

MERGED_TYPES = frozenset({"Patient", "Encounter"})
ADMINISTERED = {"Encounter": frozenset({"status"})}  # changed by ADT events only

# Choice elements ([x]) at the top level: one present in the message replaces the stored
# one whatever its type (deceasedBoolean false, then deceasedDateTime).
_CHOICES: dict[str, tuple[str, ...]] = {"Patient": ("deceased", "multipleBirth")}


def merge_update(
    stored: dict[str, Any] | None,
    new: dict[str, Any],
    *,
    keep: frozenset[str] = frozenset(),
    clear: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """``new`` over ``stored`` element by element (top level); ``new`` alone when there is
    nothing stored to keep, or the type is replaced whole. ``keep``: elements whose stored
    value stands even where ``new`` has one. ``clear``: elements the message deleted, not
    kept from ``stored`` (a choice by its prefix: ``deceased``)."""
    rtype = new.get("resourceType")
    if (
        stored is None
        or rtype not in MERGED_TYPES
        or stored.get("resourceType") != rtype
        or stored.get("id") != new.get("id")
    ):
        return new
    out = {
        k: v
        for k, v in stored.items()
        if k != "meta" and not (any(is_element(k, c) for c in clear) and k not in keep)
    }
    for prefix in _CHOICES.get(rtype, ()):
        if any(_is_choice(k, prefix) for k in new):
            for key in [k for k in out if _is_choice(k, prefix)]:
                del out[key]
    out.update((k, v) for k, v in new.items() if k != "meta" and not (k in keep and k in stored))
    if "meta" in new or "meta" in stored:
        out["meta"] = new.get("meta", stored.get("meta"))
    return out


def is_element(key: str, element: str) -> bool:
    """``key`` is ``element``, or one of its types when ``element`` names a choice
    (``deceased`` for ``deceasedBoolean``)."""
    return key == element or _is_choice(key, element)


def _is_choice(key: str, prefix: str) -> bool:
    return key.startswith(prefix) and key[len(prefix) : len(prefix) + 1].isupper()
