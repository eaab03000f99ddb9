"""The snapshot settings: defaults, REGISTRY_<KEY> overrides, and the values refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError, load_settings


def test_snapshot_settings_have_defaults_and_follow_the_environment(tmp_path: Path) -> None:
    defaults = load_settings(tmp_path / "config.yaml", env={})
    assert (defaults.snapshot_interval_s, defaults.snapshot_retention_days, defaults.restore_on_empty) == (
        300.0, 90, False,
    )

    env = {
        "REGISTRY_DATABASE_URL": "postgresql://registry@db.internal/registry",
        "REGISTRY_SNAPSHOT_INTERVAL_S": "60",
        "REGISTRY_SNAPSHOT_RETENTION_DAYS": "7",
        "REGISTRY_RESTORE_ON_EMPTY": "true",
    }
    settings = load_settings(tmp_path / "config.yaml", env=env)
    assert (settings.snapshot_interval_s, settings.snapshot_retention_days, settings.restore_on_empty) == (
        60.0, 7, True,
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("database_url", "mysql://db/registry", "database_url must be a postgresql:// URL"),
        ("snapshot_interval_s", -1, "snapshot_interval_s must be 0 or more"),
        ("snapshot_retention_days", -3, "snapshot_retention_days must be 0 or more"),
        ("restore_on_empty", "maybe", "restore_on_empty"),
    ],
)
def test_bad_snapshot_settings_are_refused(tmp_path: Path, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path / "config.yaml", env={}, overrides={key: value})


def test_a_bad_database_url_is_reported_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "config.yaml", env={}, overrides={"database_url": "mysql://u:hunter2@db/x"})
    assert "hunter2" not in str(caught.value)
