"""Settings: one object, derived paths, environment overrides."""

from __future__ import annotations

from pathlib import Path

from models.settings import Settings


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
    assert Settings(home=tmp_path, init_from="checkpoint", init_checkpoint_path=tmp_path / "m.pt").init_checkpoint_path == tmp_path / "m.pt"


# --- what a deployment run may set, and what never leaves the worker ------------------------------

import json  # noqa: E402

import pytest  # noqa: E402
from prefect.exceptions import ParameterTypeError, SignatureMismatchError  # noqa: E402

from flows import deployed  # noqa: E402
from flows.bootstrap import bootstrap  # noqa: E402
from models.settings import RUN_OVERRIDABLE, RunOverrides, redact  # noqa: E402

PASSWORD = "Pl4nted-s3cret"


@pytest.mark.parametrize(
    "url, shown",
    [
        (f"postgresql+psycopg2://freshrec:{PASSWORD}@db.internal:5432/ledger", "postgresql+psycopg2://freshrec:***@db.internal:5432/ledger"),
        (f"postgresql://freshrec:{PASSWORD}@db/mlflow?sslmode=require&password={PASSWORD}", "postgresql://freshrec:***@db/mlflow?sslmode=require&password=***"),
        (f"https://host/api?token={PASSWORD}", "https://host/api?token=***"),
        ("sqlite:////srv/freshrec/ledger.db", "sqlite:////srv/freshrec/ledger.db"),
        ("postgresql://freshrec@db/ledger", "postgresql://freshrec@db/ledger"),  # no password: nothing to hide
        (None, None),
    ],
)
def test_redact_masks_passwords_and_credential_query_values(url, shown):
    assert redact(url) == shown


def test_settings_serialized_as_prefect_stores_parameters_show_no_password(tmp_path):
    settings = Settings(
        home=tmp_path, ledger_url=f"postgresql://freshrec:{PASSWORD}@db/ledger", mlflow_tracking_uri=f"postgresql://m:{PASSWORD}@db/mlflow",
    )
    stored = json.dumps(bootstrap.serialize_parameters({"settings": settings}))  # what the Prefect API receives
    assert PASSWORD not in stored and "freshrec:***@db/ledger" in stored
    assert settings.ledger_url.endswith(f"{PASSWORD}@db/ledger")  # the worker still connects with it
    assert PASSWORD in settings.model_dump()["ledger_url"]  # a copy in the process keeps it


def test_run_overrides_are_the_allow_list_with_its_bounds():
    assert set(RunOverrides.model_fields) == set(RUN_OVERRIDABLE)
    for field in ("home", "landing_dir", "ledger_url", "mlflow_tracking_uri", "dask_address", "non_product_item_pattern",
                  "validation_partitions", "train_processes", "device", "champion_alias", "max_bad_row_share", "max_request_rows"):
        with pytest.raises(ValueError, match="Extra inputs are not permitted"):
            RunOverrides(**{field: "x"})
    for too_much in ({"batch_size": 10**9}, {"bootstrap_resamples": 10**9}, {"embedding_dim": 10**6}, {"drift_share_threshold": 2}):
        with pytest.raises(ValueError):
            RunOverrides(**too_much)


def test_overrides_change_knobs_and_keep_the_workers_stores(tmp_path):
    worker = Settings(home=tmp_path, ledger_url=f"postgresql://freshrec:{PASSWORD}@db/ledger", drift_share_threshold=0.3, replay_half_life_days=None)
    run = worker.with_overrides(RunOverrides(drift_share_threshold=0.5, finetune_epochs=4))
    assert (run.drift_share_threshold, run.finetune_epochs) == (0.5, 4)
    assert (run.home, run.ledger_url, run.landing_dir, run.replay_half_life_days) == (worker.home, worker.ledger_url, worker.landing_dir, None)
    assert worker.with_overrides(RunOverrides()) is worker and worker.with_overrides(None) is worker


def test_a_checkpoint_start_must_stay_inside_the_home(tmp_path):
    home = tmp_path / "home"
    (home / "checkpoints").mkdir(parents=True)
    (home / "checkpoints" / "escape.pt").symlink_to("/etc/passwd")
    inside = Settings(home=home, init_from="checkpoint", init_checkpoint_path=home / "checkpoints" / "model.pt")
    assert inside.init_checkpoint_path == home / "checkpoints" / "model.pt"
    for path in ("/etc/passwd", home / ".." / "other.pt", home / "checkpoints" / "escape.pt"):
        with pytest.raises(ValueError, match="inside the freshrec home"):
            Settings(home=home, init_from="checkpoint", init_checkpoint_path=path)
        with pytest.raises(ValueError, match="inside the freshrec home"):
            Settings(home=home).with_overrides(RunOverrides(init_from="checkpoint", init_checkpoint_path=path))


def test_a_deployed_flow_refuses_parameters_outside_the_allow_list():
    """What the worker checks when it starts a run, whatever the server's schema let through."""
    for parameters in ({"settings": {"home": "/"}}, {"overrides": {"home": "/"}}, {"overrides": {"dask_address": "tcp://203.0.113.7:8786"}}):
        with pytest.raises((ParameterTypeError, SignatureMismatchError)):
            deployed.continuous_training.validate_parameters(parameters)
    for bad in ({"reason": ""}, {"reason": "x" * 501}, {"reason": "ok", "to_version": "1; rm -rf /"}, {"reason": "ok", "settings": {}}):
        with pytest.raises((ParameterTypeError, SignatureMismatchError)):
            deployed.rollback.validate_parameters(bad)
    assert deployed.continuous_training.validate_parameters({"overrides": {"finetune_epochs": 3}})["overrides"].finetune_epochs == 3


def test_a_deployed_backtest_reads_data_only_inside_the_home(tmp_path):
    settings = Settings(home=tmp_path / "home")
    assert deployed.inside_home(settings, "data/online_retail.csv.gz") == (tmp_path / "home" / "data" / "online_retail.csv.gz").resolve()
    for outside in ("/etc/passwd", "../../etc/passwd"):
        with pytest.raises(ValueError, match="outside the freshrec home"):
            deployed.inside_home(settings, outside)


def test_a_broken_pattern_is_refused_with_its_setting_named():
    with pytest.raises(ValueError, match="non_product_item_pattern is not a regular expression"):
        Settings(non_product_item_pattern="(unclosed")


def test_errors_never_echo_the_rejected_value(monkeypatch):
    monkeypatch.setenv("FRESHREC_MAX_QUANTITY", f"postgresql://u:{PASSWORD}@h/d")  # a value pasted into the wrong variable
    with pytest.raises(ValueError) as error:
        Settings()
    assert "max_quantity" in str(error.value) and PASSWORD not in str(error.value)


# --- the settings reference: one text for the code, the Prefect form and docs/settings.md ---------

import re  # noqa: E402

from models.settings import settings_reference, settings_sections  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_the_settings_reference_in_docs_is_generated_from_the_settings():
    assert REFERENCE.read_text(encoding="utf-8") == settings_reference(), (
        "docs/settings.md is stale: regenerate with `freshrec settings-reference > docs/settings.md`"
    )


def test_every_setting_has_a_description():
    missing = [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"settings without a description: {missing}"


def test_the_prefect_form_shows_each_settings_own_description():
    for name, field in RunOverrides.model_fields.items():
        assert field.description == Settings.model_fields[name].description, name
    schema = RunOverrides.model_json_schema()["properties"]
    assert schema["finetune_epochs"]["description"] == Settings.model_fields["finetune_epochs"].description


def test_every_setting_is_in_exactly_one_section_of_the_reference():
    listed = [name for _, names in settings_sections() for name in names]
    assert sorted(listed) == sorted(Settings.model_fields), "a field is in no `# --- section ---` group, or in two"
    reference = settings_reference()
    for name in Settings.model_fields:
        assert len(re.findall(rf"^\| `{name}` \|", reference, flags=re.MULTILINE)) == 1, name


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_every_row_of_a_reference_table_has_its_headers_cells():
    tables: list[list[str]] = []
    previous_was_row = False
    for line in settings_reference().splitlines():
        is_row = line.startswith("|")
        if is_row and not previous_was_row:
            tables.append([])
        if is_row:
            tables[-1].append(line)
        previous_was_row = is_row
    assert len(tables) == len(settings_sections())
    for table in tables:
        header = _unescaped_pipes(table[0])
        assert header == 8  # seven columns
        for row in table[1:]:
            assert _unescaped_pipes(row) == header, row
    pattern_row = next(line for table in tables for line in table if line.startswith("| `non_product_item_pattern` |"))
    assert r"POST\|DOT" in pattern_row  # the default regex's `|` escaped, not a cell border
