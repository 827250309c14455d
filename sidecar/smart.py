"""SMART Backend Services (SMART App Launch 2.x, "client-confidential-asymmetric"): system
clients authenticate with a JWT signed by their private key and get short-lived access
tokens whose scopes the API enforces per resource type and for population access.

The flow (RFC 6749 client credentials with an RFC 7523 JWT assertion):
``POST /auth/token`` with ``grant_type=client_credentials``, ``scope``,
``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and
``client_assertion``. The assertion must be signed (RS384 or ES384) by a key of the
client's registered JWK Set (``kid`` picks it), have ``iss`` = ``sub`` = the client id,
``aud`` = the token endpoint, ``exp`` at most five minutes ahead, and a ``jti`` never used
before (``auth_assertions``, kept until it expires). The signature and claims are checked by
PyJWT; nothing here touches cryptography by hand.

Access tokens are random, held in memory (hashed) for ``smart_token_lifetime_s``: a restart
makes clients ask again, which they do when a token expires anyway.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from core.db import Database
from core.errors import ConfigError
from core.settings import SmartClient
from core.tables import AuthAssertion

__all__ = ["ALGORITHMS", "ASSERTION_TYPE", "Grant", "Scope", "TokenError", "TokenService", "parse_scopes"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME_S = 300  # SMART: exp no more than five minutes in the future
_SCOPE = re.compile(r"^(system|patient)/(\*|[A-Z][A-Za-z]{1,63})\.(read|\*|[cruds]{1,5})$")
_READ_ONLY = frozenset("rs")


class TokenError(Exception):
    """A refused token request: the OAuth error code (RFC 6749 5.2), why, and the status."""

    def __init__(self, error: str, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.error, self.reason, self.status = error, reason, status


@dataclass(frozen=True)
class Scope:
    context: str  # system or patient
    rtype: str  # a type or *
    permissions: frozenset[str]  # of c, r, u, d, s

    @property
    def text(self) -> str:
        return f"{self.context}/{self.rtype}.{''.join(p for p in 'cruds' if p in self.permissions)}"

    def covers(self, other: Scope) -> bool:
        return (
            self.context == other.context
            and self.rtype in ("*", other.rtype)
            and other.permissions <= self.permissions
        )


def parse_scopes(text: str) -> list[Scope]:
    """SMART v2 scopes (v1's .read is .rs, .* is .cruds); other words are an error."""
    out = []
    for word in text.split():
        match = _SCOPE.match(word)
        if match is None:
            raise TokenError("invalid_scope", f"{word!r} is not a system/ or patient/ resource scope")
        context, rtype, perms = match.groups()
        permissions = frozenset("rs" if perms == "read" else "cruds" if perms == "*" else perms)
        out.append(Scope(context, rtype, permissions))
    return out


@dataclass(frozen=True)
class Grant:
    """What an access token allows."""

    client: str
    scopes: tuple[Scope, ...]
    expires: float  # time.monotonic()

    def allows(self, rtype: str, permission: str, *, population: bool = False) -> bool:
        """``permission``: r (read) or s (search). ``population``: across patients, which
        only a system/ scope grants."""
        return any(
            s.rtype in ("*", rtype)
            and permission in s.permissions
            and (s.context == "system" or not population)
            for s in self.scopes
        )

    def types(self) -> set[str] | None:
        """The types it reads (None: every type)."""
        readable = {s.rtype for s in self.scopes if "r" in s.permissions}
        return None if "*" in readable else readable


class TokenService:
    """Checks client assertions, issues and looks up access tokens."""

    def __init__(self, db: Database, clients: Mapping[str, SmartClient], *, lifetime_s: int) -> None:
        self._db = db
        self._keys = {name: _key_set(name, client) for name, client in clients.items()}
        self._allowed = {name: parse_scopes(" ".join(client.scopes)) for name, client in clients.items()}
        self._lifetime_s = lifetime_s
        self._tokens: dict[str, Grant] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def knows(self, client: str) -> bool:
        return client in self._keys

    def issue(self, form: Mapping[str, str], token_url: str) -> tuple[str, dict[str, Any]]:
        """(client id, the token response) for a valid request; TokenError otherwise. The
        client id is the registered one the assertion named, or "" before it is known."""
        if form.get("grant_type") != "client_credentials":
            raise TokenError("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            raise TokenError("invalid_client", "a client_assertion JWT (jwt-bearer) is required", 401)
        assertion = form["client_assertion"]
        client = self._client_of(assertion)
        claims = self._verified(client, assertion, token_url)
        requested = parse_scopes(form.get("scope", ""))
        if not requested:
            raise TokenError("invalid_scope", "no scope requested")
        outside = [s.text for s in requested if not any(g.covers(s) for g in self._allowed[client])]
        if outside:
            raise TokenError("invalid_scope", f"not granted to this client: {' '.join(outside)}")
        self._remember_jti(client, str(claims["jti"]), float(claims["exp"]))
        token = secrets.token_urlsafe(32)
        grant = Grant(client, tuple(requested), time.monotonic() + self._lifetime_s)
        with self._lock:
            self._drop_expired()
            self._tokens[_digest(token)] = grant
        scope = " ".join(s.text for s in requested)
        return client, {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self._lifetime_s,
            "scope": scope,
        }

    def grant_of(self, token: str) -> Grant | None:
        with self._lock:
            grant = self._tokens.get(_digest(token))
        return grant if grant is not None and grant.expires > time.monotonic() else None

    def _client_of(self, assertion: str) -> str:
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenError("invalid_client", "client_assertion is not a JWT", 401) from None
        client = unverified.get("iss")
        if not isinstance(client, str) or client not in self._keys:
            raise TokenError("invalid_client", "the assertion's iss is no registered client", 401)
        return client

    def _verified(self, client: str, assertion: str, token_url: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise TokenError("invalid_client", "client_assertion is not a JWT", 401) from None
        if header.get("alg") not in ALGORITHMS:
            raise TokenError("invalid_client", f"alg must be one of {', '.join(ALGORITHMS)}", 401)
        for jwk in self._keys[client]:
            if header.get("kid") not in (None, jwk.get("kid")) or jwk.get("alg") not in (None, header["alg"]):
                continue
            try:
                key = jwt.PyJWK(jwk, algorithm=header["alg"])
            except jwt.PyJWTError:
                continue  # a key of another type (an RSA key for ES384)
            try:
                claims: dict[str, Any] = jwt.decode(
                    assertion,
                    key,
                    algorithms=[header["alg"]],
                    audience=token_url,
                    issuer=client,
                    options={"require": ["iss", "sub", "aud", "exp", "jti"]},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise TokenError("invalid_client", "the assertion has expired", 401) from None
            except jwt.PyJWTError as exc:
                raise TokenError(
                    "invalid_client", f"the assertion is invalid: {type(exc).__name__}", 401
                ) from None
            if claims["sub"] != client:
                raise TokenError("invalid_client", "the assertion's sub must be its iss", 401)
            if float(claims["exp"]) > time.time() + MAX_ASSERTION_LIFETIME_S + 60:
                raise TokenError("invalid_client", "the assertion's exp is more than five minutes ahead", 401)
            return claims
        raise TokenError("invalid_client", "no registered key of this client verifies the signature", 401)

    def _remember_jti(self, client: str, jti: str, exp: float) -> None:
        now = datetime.now(UTC)
        expires = datetime.fromtimestamp(exp, UTC) + timedelta(seconds=60)
        digest = hashlib.sha256(f"{client}\x00{jti}".encode()).hexdigest()
        try:
            with self._db.transaction() as session:
                session.execute(delete(AuthAssertion).where(AuthAssertion.expires_at < now))
                session.add(AuthAssertion(digest=digest, client=client, expires_at=expires))
        except IntegrityError:
            raise TokenError("invalid_grant", "this assertion's jti was used before (replay)") from None

    def _drop_expired(self) -> None:
        now = time.monotonic()
        for key in [k for k, g in self._tokens.items() if g.expires <= now]:
            del self._tokens[key]


def claimed_client(assertion: str) -> str:
    """The iss an assertion names, unverified (for the audit entry of a refusal only)."""
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return ""
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) else ""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _key_set(name: str, client: SmartClient) -> list[dict[str, Any]]:
    """The client's public JWKs that can verify RS384 or ES384 (checked at start-up)."""
    if (client.jwks is None) == (client.jwks_file is None):
        raise ConfigError(f"smart_clients.{name}: set one of jwks and jwks_file")
    try:
        data = client.jwks if client.jwks is not None else json.loads(Path(str(client.jwks_file)).read_text())
        usable = []
        for jwk in data.get("keys", []):
            for alg in ALGORITHMS:
                try:
                    jwt.PyJWK(jwk, algorithm=alg)
                except jwt.PyJWTError:
                    continue
                if "d" in jwk:
                    raise ConfigError(f"smart_clients.{name}: its JWK Set holds a private key")
                usable.append(jwk)
                break
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"smart_clients.{name}: its JWK Set cannot be read: {exc}") from exc
    if not usable:
        raise ConfigError(f"smart_clients.{name}: no RS384 or ES384 key in its JWK Set")
    try:
        parse_scopes(" ".join(client.scopes))
    except TokenError as exc:
        raise ConfigError(f"smart_clients.{name}.scopes: {exc.reason}") from None
    return usable
