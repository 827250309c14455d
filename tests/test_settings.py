from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings, load_settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    doc = DOC.read_text()
    missing = [name for name in Settings.model_fields if f"`SIDECAR_{name.upper()}`" not in doc]
    assert not missing


def test_precedence_flags_over_env_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "sidecar.toml"
    toml.write_text('mllp_port = 3000\nsite_timezone = "Asia/Shanghai"\nrelay_batch_size = 7\n')
    monkeypatch.setenv("SIDECAR_CONFIG", str(toml))
    monkeypatch.setenv("SIDECAR_MLLP_PORT", "4000")
    monkeypatch.setenv("SIDECAR_RELAY_BATCH_SIZE", "9")
    settings = load_settings(mllp_port=5000)
    assert settings.mllp_port == 5000  # flag
    assert settings.relay_batch_size == 9  # env over TOML
    assert settings.site_timezone == "Asia/Shanghai"  # TOML over default


def test_unknown_toml_key_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "sidecar.toml"
    toml.write_text("mllp_prot = 3000\n")
    monkeypatch.setenv("SIDECAR_CONFIG", str(toml))
    with pytest.raises(ValidationError):
        Settings()


def test_embedded_default_is_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.embedded
    assert settings.effective_database_url == f"sqlite:///{tmp_path.resolve()}/sidecar.db"
