"""The event contract (CloudEvents 1.0, structured JSON mode). See docs/events.md.

``id`` is stable for one resource version, so a consumer that sees an event twice
(at-least-once delivery) can drop the second copy by id.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

EVENT_SOURCE = "urn:hl7-fhir-sidecar"
TYPE_PREFIX = "org.hl7-fhir-sidecar"


class ChangeKind(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


def resource_routing_key(resource_type: str, change: ChangeKind) -> str:
    return f"fhir.{resource_type}.{change}"


def summary_routing_key(kind: str) -> str:
    return f"summary.{kind}.completed"


def resource_event(
    resource: dict[str, Any], change: ChangeKind, *, patient: str | None, time: datetime | str
) -> dict[str, Any]:
    """``time``: when the change was stored (or its ISO 8601 text, for callers that make many)."""
    rtype, rid, version = resource["resourceType"], resource["id"], resource["meta"]["versionId"]
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"{rtype}/{rid}/_history/{version}",
        "source": EVENT_SOURCE,
        "type": f"{TYPE_PREFIX}.fhir.{rtype}.{change}",
        "time": time if isinstance(time, str) else time.isoformat(),
        "datacontenttype": "application/fhir+json",
        "dataschema": f"http://hl7.org/fhir/R4/{rtype.lower()}.html",
        "data": resource,
    }
    if patient:
        event["subject"] = f"Patient/{patient}"
    return event


def summary_event(
    kind: str, document: dict[str, Any], *, job_id: int, patient: str, time: datetime
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"summary/{job_id}/{document['id']}/{document['meta']['versionId']}",
        "source": EVENT_SOURCE,
        "type": f"{TYPE_PREFIX}.summary.{kind}.completed",
        "time": time.isoformat(),
        "subject": f"Patient/{patient}",
        "datacontenttype": "application/fhir+json",
        "data": document,
    }
