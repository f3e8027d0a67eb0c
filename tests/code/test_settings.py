"""Settings: one object, derived paths, environment overrides."""

from __future__ import annotations

from pathlib import Path

from flows.settings import Settings


def test_paths_derive_from_home(tmp_path):
    settings = Settings(home=tmp_path / "state")
    assert settings.landing_dir == tmp_path / "state" / "landing"
    assert settings.quarantine_dir == tmp_path / "state" / "quarantine"
    assert settings.ledger_url == f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"


def test_default_home_is_dot_freshrec():
    assert Settings().home == Path(".freshrec")


def test_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("FRESHREC_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("FRESHREC_DRIFT_SHARE_THRESHOLD", "0.6")
    monkeypatch.setenv("FRESHREC_LANDING_DIR", str(tmp_path / "inbox"))
    settings = Settings()
    assert settings.accepted_dir == tmp_path / "elsewhere" / "accepted"
    assert settings.landing_dir == tmp_path / "inbox"  # an explicit path beats the derived one
    assert settings.drift_share_threshold == 0.6


def test_standard_mlflow_tracking_uri_is_respected(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert Settings().mlflow_tracking_uri == "http://127.0.0.1:5000"


def test_a_checkpoint_start_needs_its_path(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="init_checkpoint_path"):
        Settings(init_from="checkpoint")
    assert Settings(init_from="checkpoint", init_checkpoint_path=tmp_path / "m.pt").init_checkpoint_path == tmp_path / "m.pt"
