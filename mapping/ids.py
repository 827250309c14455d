"""Deterministic resource ids from the source's own identifiers.

Re-mapping a message, or a later message about the same patient/visit/order, must give the
same id so a transaction Bundle PUT upserts instead of duplicating. The id is a hash so that
no raw identifier ever shows in an id or a reference. It is an *unkeyed* hash of low-entropy
values (an MRN can be brute-forced back), so ids built here belong to the identified zone:
the de-identification step must re-key them before anything crosses the line.
"""

from __future__ import annotations

import hashlib

_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in an HL7 value, so parts never run together


def resource_id(resource_type: str, *parts: str) -> str:
    """32 lowercase hex characters (FHIR id: ``[A-Za-z0-9\\-.]{1,64}``)."""
    material = _SEPARATOR.join((resource_type, *parts))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]


def message_basis(sender: str, control_id: str, text: str) -> str:
    """What positional ids hang off: the sender (MSH-3/MSH-4) with its MSH-10, since control ids
    are only unique per sender; a digest of the text when MSH-10 is empty (then only a resend of
    the very same text maps to the same ids)."""
    if control_id:
        return _SEPARATOR.join(("msh", sender, control_id))
    return "text:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def reference(resource_type: str, resource_id_: str) -> dict[str, str]:
    return {"reference": f"{resource_type}/{resource_id_}"}
