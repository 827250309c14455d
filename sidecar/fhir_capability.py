"""The CapabilityStatement (``GET /fhir/metadata``): what this server answers, built from the
same tables the search code reads (``core.search_index.SEARCH_PARAMETERS``,
``sidecar.fhir_search``), so it cannot declare a parameter the server does not apply."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.search_index import SEARCH_PARAMETERS
from sidecar.fhir_search import (
    COMMON_PARAMETERS,
    PATIENT_PARAMETERS,
    includes_of,
    revincludes_of,
    searchable_types,
)

__all__ = ["capability_statement"]

EVERYTHING = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
_BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
_SORTABLE = "Sort with _sort by _id, _lastUpdated"


def _resource(rtype: str, types: Sequence[str]) -> dict[str, Any]:
    params = [{"name": n, "type": t, "definition": d} for n, t, d in COMMON_PARAMETERS]
    if rtype != "Patient":
        params += [{"name": n, "type": t, "definition": d} for n, t, d in PATIENT_PARAMETERS]
    params += [
        {"name": p.name, "type": p.kind, "definition": p.definition} for p in SEARCH_PARAMETERS.get(rtype, ())
    ]
    if rtype == "Provenance":
        params.append(
            {
                "name": "target",
                "type": "reference",
                "definition": "http://hl7.org/fhir/SearchParameter/Provenance-target",
            }
        )
    date = next((p.name for p in SEARCH_PARAMETERS.get(rtype, ()) if p.kind == "date"), None)
    entry: dict[str, Any] = {
        "type": rtype,
        "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "search-type"}],
        "versioning": "versioned",
        "readHistory": True,
        "conditionalRead": "not-supported",
        "searchInclude": includes_of(rtype),
        "searchRevInclude": revincludes_of(rtype, types),
        "searchParam": params,
        "documentation": _SORTABLE + (f", {date}" if date else "") + " (each also descending with '-').",
    }
    if rtype == "Patient":
        entry["operation"] = [{"name": "everything", "definition": EVERYTHING}]
    return entry


def capability_statement(
    base: str,
    stored_types: Sequence[str],
    *,
    version: str,
    date: str,
    token_url: str | None = None,
    bulk: bool = False,
    subscription_topics: Sequence[str] = (),
) -> dict[str, Any]:
    """The server's CapabilityStatement (R4, kind instance): every type ``stored_types``
    names and every type the search tables know. ``token_url``: SMART Backend Services'
    token endpoint, when clients are registered. ``bulk``: the Bulk Data $export operations.
    ``subscription_topics``: the topics a rest-hook Subscription may name (none: no
    subscriptions)."""
    types = searchable_types(stored_types)
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "hl7-fhir-sidecar",
        "kind": "instance",
        "software": {"name": "hl7-fhir-sidecar", "version": version},
        "implementation": {
            "description": "De-identified, read-only FHIR R4 view of a hospital's feeds",
            "url": base,
        },
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Read-only and de-identified. Searches name a patient (patient= or subject=) "
                    "unless the client is granted population access. Unknown parameters are "
                    "ignored and left out of the self link, or refused with "
                    "'Prefer: handling=strict'. Pages follow the next link (keyset paging)."
                ),
                "security": _security(token_url),
                "resource": [_resource(t, types) for t in types],
            }
        ],
    }
    if bulk:
        statement["instantiates"] = ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"]
        statement["rest"][0]["operation"] = [{"name": "export", "definition": f"{_BULK}/export"}]
        for entry in statement["rest"][0]["resource"]:
            if entry["type"] in ("Patient", "Group"):
                kind = entry["type"].lower()
                entry.setdefault("operation", []).append(
                    {"name": "export", "definition": f"{_BULK}/{kind}-export"}
                )
    if subscription_topics:
        backport = "http://hl7.org/fhir/uv/subscriptions-backport"
        topic_url = f"{backport}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
        statement["rest"][0]["resource"].append(
            {
                "type": "Subscription",
                "supportedProfile": [f"{backport}/StructureDefinition/backport-subscription"],
                "interaction": [{"code": "create"}, {"code": "read"}, {"code": "delete"}],
                "operation": [
                    {
                        "name": "status",
                        "definition": f"{backport}/OperationDefinition/backport-subscription-status",
                    },
                    {
                        "name": "events",
                        "definition": f"{backport}/OperationDefinition/backport-subscription-events",
                    },
                ],
                "extension": [
                    {
                        "url": topic_url,
                        "valueCanonical": topic,
                    }
                    for topic in subscription_topics
                ],
                "documentation": "rest-hook channel only; notifications signed (X-Sidecar-Signature)",
            }
        )
    return statement


def _security(token_url: str | None) -> dict[str, Any]:
    security: dict[str, Any] = {
        "cors": False,
        "description": "Every request needs a bearer token except this statement and SMART's "
        "discovery document: a static token (api_tokens) or one from the SMART token endpoint.",
    }
    if token_url:
        security["extension"] = [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": "token", "valueUri": token_url}],
            }
        ]
        security["service"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "SMART Backend Services (client credentials, private_key_jwt)",
            }
        ]
    return security
