"""Settings: defaults, validation messages that name the key and file, paths, secrets from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from churnsync.config import STARTER_CONFIG, AttributeRule, Settings, find_config, load_settings
from churnsync.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "churnsync.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_starter_config_is_valid_and_documented_defaults_hold(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, STARTER_CONFIG))
    assert settings.prediction.horizon_days == 30
    assert settings.prediction.risk_cut_points == (0.5, 0.75)
    assert settings.destinations["braze"].batch_size == 75
    assert settings.destinations["braze"].api_key_env == "BRAZE_API_KEY"
    assert settings.data.paths == [str(tmp_path / "data/events*.csv")]


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[destinations.braze]\nbatchsize = 50\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "unknown key 'destinations.braze.batchsize'" in message
    assert str(path) in message
    assert "\n" not in message


def test_mistyped_value_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'prediction.horizon_days'"):
        load_settings(write(tmp_path, "[prediction]\nhorizon_days = 'thirty'\n"))
    with pytest.raises(ConfigError, match=r"key 'destinations.b.batch_size'"):
        load_settings(write(tmp_path, "[destinations.b]\nbatch_size = 100\n"))


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[data\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_cut_points_must_be_ordered(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="risk_cut_points"):
        load_settings(write(tmp_path, "[prediction]\nrisk_cut_points = [0.8, 0.5]\n"))


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    path = sub / "c.toml"
    path.write_text('[data]\npaths = ["ev/*.parquet"]\n[store]\nurl = "sqlite:///s.db"\n', encoding="utf-8")
    settings = load_settings(path)
    assert settings.data.paths == [str(sub / "ev/*.parquet")]
    assert settings.store.url == f"sqlite:///{sub / 's.db'}"


def test_api_key_only_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.model_validate({"destinations": {"prod": {"api_key_env": "MY_BRAZE_KEY"}}})
    monkeypatch.delenv("MY_BRAZE_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_BRAZE_KEY is not set"):
        settings.destinations["prod"].api_key("prod")
    monkeypatch.setenv("MY_BRAZE_KEY", "secret-123")
    assert settings.destinations["prod"].api_key("prod") == "secret-123"
    with pytest.raises(ConfigError, match=r"unknown key 'destinations\.prod\.api_key'"):
        load_settings_from({"destinations": {"prod": {"api_key": "inline"}}})


def load_settings_from(raw: dict[str, object]) -> Settings:
    from churnsync.config import settings_from_mapping

    return settings_from_mapping(raw)


def test_store_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    monkeypatch.setenv("CHURNSYNC_STORE_URL", "postgresql+psycopg://u:pw@db/x")
    assert settings.store.resolved_url() == "postgresql+psycopg://u:pw@db/x"


def test_attribute_rules_fall_back_by_prefix() -> None:
    attributes = Settings().attributes
    assert attributes.rule_for("expected_purchases_30d") == AttributeRule(round=2, abs_tolerance=0.05)
    assert attributes.rule_for("churn_risk") == AttributeRule()


def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHURNSYNC_CONFIG", raising=False)
    assert find_config(None) is None
    write(tmp_path, "")
    assert find_config(None) == tmp_path / "churnsync.toml"
    monkeypatch.setenv("CHURNSYNC_CONFIG", "other.toml")
    assert find_config(None) == Path("other.toml")
    assert find_config(Path("x.toml")) == Path("x.toml")
