"""Deterministic resource ids from the source's own identifiers.

Re-mapping a message, or a later message about the same patient/visit/order, must give the
same id so a transaction Bundle PUT upserts instead of duplicating. The id is a hash so that
no raw identifier ever shows in an id or a reference. It is an *unkeyed* hash of low-entropy
values (an MRN can be brute-forced back), so ids built here belong to the identified zone:
the de-identification step must re-key them before anything crosses the line.
"""

from __future__ import annotations

import hashlib

from mapping.model import PatientKey

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


MESSAGE_SCOPE_AUTHORITY = "urn:sidecar:message-scope"
"""The authority of a patient key made from a message's own identity (``scoped_key``): never
a real assigning authority, so ``sidecar stats`` counts these patients as ``unlinked``."""

NO_PID = "no-PID"
"""The ``part`` of ``scoped_key`` for a message without any PID."""

_MAX_SCOPE_CHARS = 300  # reid_map.identifier holds 400: a longer MSH-3/4 is digested instead


def scoped_key(basis: str, part: str) -> PatientKey:
    """The key of a patient the message does not identify (a PID without identifier, or no PID):
    the message's ``basis`` (``message_basis``) and the ``part`` of it the patient comes from.
    A resend maps to the same patient, no other message does; the vault keys it like any
    identifier, and it is printable so that ``sidecar reid`` names the message it came from."""
    scope = basis.replace(_SEPARATOR, "|")
    if len(scope) > _MAX_SCOPE_CHARS:
        scope = "sha256:" + hashlib.sha256(basis.encode("utf-8")).hexdigest()
    return PatientKey(authority=MESSAGE_SCOPE_AUTHORITY, value=f"{scope}|{part}")


def reference(resource_type: str, resource_id_: str) -> dict[str, str]:
    return {"reference": f"{resource_type}/{resource_id_}"}
