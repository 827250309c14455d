import os
import stat

import pytest

from core.errors import ConfigError
from deid import Vault, load_or_create_secret


def test_creates_a_private_secret_once_and_reuses_it(tmp_path):
    path = tmp_path / "deid.secret"
    secret = load_or_create_secret(path)
    assert len(secret) == 64 and bytes.fromhex(secret.decode())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == secret
    Vault(secret)  # usable as is
    assert [p.name for p in tmp_path.iterdir()] == ["deid.secret"]  # no temp file left behind


def test_two_fresh_files_get_different_secrets(tmp_path):
    assert load_or_create_secret(tmp_path / "a") != load_or_create_secret(tmp_path / "b")


def test_creation_ignores_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "s"
        load_or_create_secret(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reads_an_operator_provided_secret_stripped(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(b"  my-operator-chosen-secret-value\n")
    path.chmod(0o400)
    assert load_or_create_secret(path) == b"my-operator-chosen-secret-value"


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(b"\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="empty"):
        load_or_create_secret(path)


def test_too_short_secret_is_refused(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(ConfigError):
        load_or_create_secret(path)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602])
def test_file_accessible_to_others_is_refused_and_not_echoed(tmp_path, mode):
    path = tmp_path / "s"
    path.write_bytes(b"a-perfectly-long-secret-value-here")
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        load_or_create_secret(path)
    assert "a-perfectly-long-secret" not in str(info.value)


def test_directory_instead_of_file_is_refused(tmp_path):
    with pytest.raises(ConfigError):
        load_or_create_secret(tmp_path)


def test_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        load_or_create_secret(tmp_path / "missing" / "s")


def test_unreadable_file_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "s"
    path.write_bytes(b"a-perfectly-long-secret-value-here")
    path.chmod(0o600)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # chmod 000 does not stop root, so simulate the refusal the OS would give.
    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ConfigError):
        load_or_create_secret(path)


def test_concurrent_creator_wins_and_both_read_the_same_secret(tmp_path, monkeypatch):
    path = tmp_path / "s"
    real_link = os.link

    def racing_link(src, dst):
        # Another process creates the file between our read attempt and our link.
        with open(os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "w") as other:
            other.write("the-other-process-secret-0123456789\n")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    assert load_or_create_secret(path) == b"the-other-process-secret-0123456789"
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
