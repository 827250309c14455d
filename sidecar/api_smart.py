"""SMART Backend Services' HTTP side: the discovery document and the token endpoint
(``POST /auth/token``); the checks themselves are ``sidecar.smart``'s."""

# No `from __future__ import annotations`: FastAPI reads route annotations at definition time.
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

import audit
from core.db import Database
from sidecar.api_audit import AuthGuard, Redactor
from sidecar.smart import ALGORITHMS, TokenError, TokenService, claimed_client

__all__ = ["smart_router", "token_endpoint"]


def token_endpoint(request: Request, configured: str | None) -> str:
    """The token endpoint's URL as clients address it (the ``aud`` of their assertions)."""
    return configured or str(request.base_url).rstrip("/") + "/auth/token"


def smart_router(
    db: Database, smart: TokenService | None, token_url: str | None, auth: AuthGuard, redactor: Redactor
) -> APIRouter:
    router = APIRouter()

    @router.get("/.well-known/smart-configuration")
    def smart_configuration(request: Request) -> JSONResponse:
        """SMART's discovery document (no token, as the spec expects)."""
        if smart is None or not smart.enabled:
            raise HTTPException(404, "SMART Backend Services are not configured (smart_clients)")
        return JSONResponse(
            {
                "token_endpoint": token_endpoint(request, token_url),
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
                "scopes_supported": ["system/*.rs", "system/*.read", "patient/*.rs", "patient/*.read"],
                "capabilities": ["client-confidential-asymmetric", "permission-v2", "permission-v1"],
            }
        )

    @router.post("/auth/token")
    async def issue_token(request: Request) -> JSONResponse:
        """Client credentials with a signed JWT (SMART Backend Services); every answer audited."""
        source = request.client.host if request.client is not None else "unknown"
        if wait := auth.retry_after(source):
            auth.failed(source, throttled=True)
            raise HTTPException(
                429, "too many failed authentications from this address", {"Retry-After": str(wait)}
            )
        body = await request.body()
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")[:65536]).items()}
        no_store = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        try:
            if smart is None or not smart.enabled:
                raise TokenError("invalid_client", "no SMART clients are configured", 401)
            name, answer = smart.issue(form, token_endpoint(request, token_url))
        except TokenError as exc:
            auth.failed(source, throttled=False)
            claimed = claimed_client(form.get("client_assertion", ""))
            actor = (
                f"smart:{claimed if smart is not None and smart.knows(claimed) else redactor.ref(claimed)}"
            )
            with db.transaction() as session:
                audit.append(
                    session, actor=actor, action="auth.token", entity="/auth/token",
                    outcome=audit.Outcome.FAILURE, detail={"error": exc.error, "reason": exc.reason},
                )  # fmt: skip
            error = {"error": exc.error, "error_description": exc.reason}
            headers = no_store | ({"WWW-Authenticate": "Bearer"} if exc.status == 401 else {})
            return JSONResponse(error, status_code=exc.status, headers=headers)
        with db.transaction() as session:
            audit.append(
                session, actor=f"smart:{name}", action="auth.token", entity="/auth/token",
                detail={"scope": answer["scope"], "expires_in": answer["expires_in"]},
            )  # fmt: skip
        return JSONResponse(answer, headers=no_store)

    return router
