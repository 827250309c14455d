"""SMART Backend Services against `sidecar serve`'s API over a real socket (issue 20): a
client signs a JWT with its private key (RS384 and ES384, keys made here with
`cryptography`, assertions signed with PyJWT as client libraries do), gets a token and
uses it from fhirpy; a wrong key, an expired assertion, a replayed jti and a scope outside
the grant are refused, and every refusal is audited. Scopes are enforced per type and for
searches across patients.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError, ForbiddenError
from pydantic import SecretStr
from sqlalchemy import select

from bench.e2e_messages import message
from core.settings import SmartClient
from core.tables import AuditEntry
from tests.deployments import Embedded

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP384R1())
INTRUDER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _public_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg.startswith("RS") else jwt.algorithms.ECAlgorithm
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return jwk | {"kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Embedded, str]]:
    dep = Embedded(
        tmp_path_factory.mktemp("smart") / "data",
        api_port=0,
        api_tokens={"static": SecretStr("a-static-token-for-the-simple-option")},
        smart_clients={
            "lab-llm": SmartClient(
                jwks={"keys": [_public_jwk(RSA_KEY, "rsa-1", "RS384")]}, scopes=["system/Observation.rs"]
            ),
            "research": SmartClient(
                jwks={"keys": [_public_jwk(EC_KEY, "ec-1", "ES384")]}, scopes=["system/*.rs"]
            ),
        },
    )
    dep.start()
    try:
        dep.deliver(*[message(seq, "S", patient_count=2) for seq in range(4)])
        assert dep.app is not None and dep.app.api is not None
        yield dep, f"http://127.0.0.1:{dep.app.api.port}"
    finally:
        dep.stop()


def _assertion(client: str, key: Any, kid: str, alg: str, aud: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": client, "sub": client, "aud": aud, "exp": now + 240, "jti": uuid.uuid4().hex} | claims
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def _ask(base: str, assertion: str, scope: str) -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    return httpx.post(f"{base}/auth/token", data=form, timeout=30)


def _refusals(dep: Embedded) -> list[dict[str, Any]]:
    with dep.db.sessions() as s:
        rows = s.execute(
            select(AuditEntry).where(AuditEntry.action == "auth.token", AuditEntry.outcome == "failure")
        ).scalars()
        return [json.loads(e.detail) | {"actor": e.actor} for e in rows]


def test_discovery_documents_name_the_token_endpoint(server: tuple[Embedded, str]) -> None:
    _dep, base = server
    config = httpx.get(f"{base}/.well-known/smart-configuration", timeout=30).json()
    assert config["token_endpoint"] == f"{base}/auth/token"
    assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    assert set(config["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    statement = httpx.get(f"{base}/fhir/metadata", timeout=30).json()
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert security["extension"][0]["extension"][0]["valueUri"] == f"{base}/auth/token"


def test_a_signed_assertion_gets_a_token_that_fhir_clients_use_within_its_scopes(
    server: tuple[Embedded, str],
) -> None:
    _dep, base = server
    aud = f"{base}/auth/token"
    answer = _ask(base, _assertion("lab-llm", RSA_KEY, "rsa-1", "RS384", aud), "system/Observation.rs")
    assert answer.status_code == 200, answer.text
    token = answer.json()
    assert token["token_type"] == "bearer" and token["scope"] == "system/Observation.rs"
    assert 0 < token["expires_in"] <= 300 and answer.headers["cache-control"] == "no-store"

    lab = SyncFHIRClient(f"{base}/fhir", authorization=f"Bearer {token['access_token']}")
    observations = lab.resources("Observation").fetch_all()  # system/: across patients
    assert len(observations) == 40  # 4 ORUs x 10 results, of two patients
    with pytest.raises(ForbiddenError):
        lab.resources("Patient").fetch_all()  # a type outside its scopes
    with pytest.raises(ForbiddenError):
        lab.reference("Patient", observations[0].subject.reference.split("/")[1]).to_resource()

    ec_answer = _ask(base, _assertion("research", EC_KEY, "ec-1", "ES384", aud), "system/*.read")
    assert ec_answer.status_code == 200, ec_answer.text
    research = SyncFHIRClient(f"{base}/fhir", authorization=f"Bearer {ec_answer.json()['access_token']}")
    assert len(research.resources("Patient").fetch_all()) == 2
    # A patient/ scope reads one patient at a time: no search across patients.
    narrow = _ask(base, _assertion("research", EC_KEY, "ec-1", "ES384", aud), "patient/Observation.rs")
    assert narrow.status_code == 400 and narrow.json()["error"] == "invalid_scope"  # not in its grant


def test_wrong_key_expired_replayed_and_unscoped_assertions_are_refused_and_audited(
    server: tuple[Embedded, str],
) -> None:
    dep, base = server
    aud = f"{base}/auth/token"
    before = len(_refusals(dep))
    wrong_key = _ask(
        base, _assertion("lab-llm", INTRUDER_KEY, "rsa-1", "RS384", aud), "system/Observation.rs"
    )
    assert wrong_key.status_code == 401 and wrong_key.json()["error"] == "invalid_client"
    expired = _assertion("lab-llm", RSA_KEY, "rsa-1", "RS384", aud, exp=int(time.time()) - 120)
    assert _ask(base, expired, "system/Observation.rs").status_code == 401
    once = _assertion("lab-llm", RSA_KEY, "rsa-1", "RS384", aud)
    assert _ask(base, once, "system/Observation.rs").status_code == 200
    replayed = _ask(base, once, "system/Observation.rs")
    assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_grant"
    beyond = _ask(base, _assertion("lab-llm", RSA_KEY, "rsa-1", "RS384", aud), "system/Patient.rs")
    assert beyond.status_code == 400 and beyond.json()["error"] == "invalid_scope"
    other_aud = _ask(
        base,
        _assertion("lab-llm", RSA_KEY, "rsa-1", "RS384", "https://elsewhere/token"),
        "system/Observation.rs",
    )
    assert other_aud.status_code == 401
    stranger = _ask(base, _assertion("nobody", RSA_KEY, "rsa-1", "RS384", aud), "system/*.rs")
    assert stranger.status_code == 401
    weak = jwt.encode(
        {"iss": "lab-llm", "sub": "lab-llm", "aud": aud, "exp": int(time.time()) + 60, "jti": "x"},
        "a-shared-secret-is-not-a-key",
        algorithm="HS256",
    )
    assert _ask(base, weak, "system/Observation.rs").status_code == 401

    refusals = _refusals(dep)[before:]
    client, grant, scope = "invalid_client", "invalid_grant", "invalid_scope"
    assert [r["error"] for r in refusals] == [client, client, grant, scope, client, client, client]
    assert {r["actor"] for r in refusals[:4]} == {"smart:lab-llm"}
    assert refusals[5]["actor"].startswith("smart:h:")  # a client we do not know: its name hashed
    # A token that was never issued is refused like any unknown bearer token.
    stray = SyncFHIRClient(f"{base}/fhir", authorization="Bearer not-issued-here")
    with pytest.raises(AuthorizationError):
        stray.resources("Observation").fetch()
