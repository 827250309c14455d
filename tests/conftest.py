"""Shared fixtures: real servers, fresh state per test.

PostgreSQL: a new database per test (dropped afterwards). RabbitMQ: a new virtual host
per test, so queues and exchanges of one test never meet another's.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import psycopg
import pytest
from sqlalchemy.engine import make_url

from connectors.inbox import DatabaseInbox
from core.db import Database
from core.settings import Settings

PG_ADMIN = os.environ.get("SIDECAR_TEST_PG", "postgresql://root@127.0.0.1:5432/test")
RABBIT_HOST = os.environ.get("SIDECAR_TEST_RABBIT_HOST", "127.0.0.1")


def _pg_available() -> bool:
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
        return True
    except psycopg.Error:
        return False


def _rabbit_available() -> bool:
    try:
        pika.BlockingConnection(pika.ConnectionParameters(RABBIT_HOST, socket_timeout=3)).close()
        return True
    except Exception:
        return False


def _require(available: bool, what: str) -> None:
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not reachable; CI must provide it (.ci/run starts it)")
    pytest.skip(f"{what} is not reachable")


@pytest.fixture
def pg_url() -> Iterator[str]:
    _require(_pg_available(), "PostgreSQL at 127.0.0.1:5432")
    name = f"sidecar_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sandbox_url(pg_url: str, tmp_path: Path) -> Iterator[str]:
    """A login role in ``sidecar_model_zone`` (the migrations' group role) on the test's
    fresh database: what `sidecar sandbox` logs in as in production. The database is
    migrated first, as an operator's would be: on a new cluster nothing else has created
    the group role yet."""
    migrated = Database(Settings(data_dir=tmp_path, database_url=pg_url))
    migrated.migrate()
    migrated.dispose()
    role = f"sandbox_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE sidecar_model_zone")
    yield make_url(pg_url).set(username=role, password=None).render_as_string(hide_password=False)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_on_both(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database, once on SQLite under tmp_path and once on a fresh PostgreSQL one."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    database = Database(Settings(data_dir=tmp_path, database_url=url))
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def rabbit_vhost() -> Iterator[str]:
    """A fresh vhost; yields the AMQP URL (Celery spelling, which pika_parameters accepts)."""
    _require(_rabbit_available(), "RabbitMQ at 127.0.0.1:5672")
    vhost = f"sidecar-t-{uuid.uuid4().hex[:12]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    yield f"amqp://guest:guest@{RABBIT_HOST}:5672/{vhost}"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, capture_output=True)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files), for TLS tests."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[tuple[Database, DatabaseInbox]]:
    """A migrated SQLite database under the test's folder and its inbox (the drop folder's sink)."""
    db = Database(Settings(data_dir=tmp_path / "data"))
    db.migrate()
    yield db, DatabaseInbox(db)
    db.dispose()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database under the test's folder."""
    database = Database(Settings(data_dir=tmp_path / "data"))
    database.migrate()
    yield database
    database.dispose()
