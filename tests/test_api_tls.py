"""The HTTP API over HTTPS: a client that trusts the certificate reads, one that speaks
plain HTTP to the same port gets nothing, and half a configuration stops start-up."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from core.errors import ConfigError
from core.settings import Settings
from sidecar.app import SidecarApp
from tests.deployments import Embedded

TOKEN = "t0k3n-for-the-tls-test-client"


def test_the_api_serves_https_with_the_configured_certificate(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    dep = Embedded(
        tmp_path / "data",
        api_port=0,
        api_tokens={"client": TOKEN},
        api_tls_cert_file=cert,
        api_tls_key_file=key,
    )
    dep.start()
    try:
        assert dep.app is not None and dep.app.api is not None
        port = dep.app.api.port
        auth = {"Authorization": f"Bearer {TOKEN}"}
        trusting = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(verify=trusting, timeout=30) as https:
            response = https.get(f"https://127.0.0.1:{port}/status", headers=auth)
        assert response.status_code == 200
        assert "inbox" in response.json()
        with httpx.Client(timeout=30) as plain, pytest.raises(httpx.HTTPError):
            plain.get(f"http://127.0.0.1:{port}/status", headers=auth)
        with httpx.Client(timeout=30) as untrusting, pytest.raises(httpx.ConnectError):
            untrusting.get(f"https://127.0.0.1:{port}/status", headers=auth)  # default CAs only
    finally:
        dep.stop()


def test_a_certificate_without_its_key_stops_start_up(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, _ = certificate
    tokens = {"client": TOKEN}
    settings = Settings(data_dir=tmp_path, mllp_port=0, api_port=0, api_tokens=tokens, api_tls_cert_file=cert)
    with pytest.raises(ConfigError, match="api_tls_key_file"):
        SidecarApp(settings)
