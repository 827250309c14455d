"""The HTTP API over HTTPS: a client that trusts the certificate reads, one that speaks
plain HTTP to the same port gets nothing, half a configuration stops start-up, and TLS
handshakes are inside the connection caps and the request deadline."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx
import pytest

from core.errors import ConfigError
from core.settings import Settings
from sidecar.app import SidecarApp
from tests.deployments import Embedded, wait_for

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


def test_tls_handshakes_count_against_the_caps_and_must_finish_in_time(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """A connection that never starts its handshake holds a slot only until the request
    deadline; over the per-peer cap a peer is closed before any handshake, while another
    peer is served. The caps and the 1 s deadline are what is tested."""
    cert, key = certificate
    dep = Embedded(
        tmp_path / "data",
        api_port=0,
        api_tokens={"client": TOKEN},
        api_tls_cert_file=cert,
        api_tls_key_file=key,
        api_max_connections=8,
        api_max_connections_per_peer=2,
        api_header_timeout_s=1,
    )
    dep.start()
    silent: list[socket.socket] = []
    try:
        assert dep.app is not None and dep.app.api is not None
        port = dep.app.api.port
        trusting = ssl.create_default_context(cafile=str(cert))
        silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        # The same peer's third connection is closed before its handshake...
        with pytest.raises(OSError):  # an SSLError or a reset: the handshake is what is refused
            third = socket.create_connection(("127.0.0.1", port), timeout=10)
            with trusting.wrap_socket(third, server_hostname="127.0.0.1"):
                pass
        # ... while another peer is served.
        second = httpx.HTTPTransport(verify=trusting, local_address="127.0.0.2")
        with httpx.Client(transport=second, timeout=30) as https:
            response = https.get(
                f"https://127.0.0.1:{port}/status", headers={"Authorization": f"Bearer {TOKEN}"}
            )
        assert response.status_code == 200

        def closed(sock: socket.socket) -> bool:
            try:
                return sock.recv(1) == b""
            except TimeoutError:
                return False
            except OSError:
                return True

        for sock in silent:
            sock.settimeout(0.2)
        wait_for(lambda: all(closed(s) for s in silent), timeout=15, interval=0.2)
        registry = dep.app.metrics.registry
        assert registry.get_sample_value("sidecar_api_connections_refused_total", {"cap": "per-peer"}) == 1
        assert registry.get_sample_value("sidecar_api_connections_timed_out_total") == 2
    finally:
        for sock in silent:
            sock.close()
        dep.stop()
