"""deploy/docker-compose.sentinel.yml (no Docker engine here): it parses and matches the settings."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.config import load_settings

COMPOSE = Path(__file__).resolve().parent.parent / "deploy" / "docker-compose.sentinel.yml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_every_registry_instance_loads_its_environment_as_valid_settings(tmp_path):
    services = compose()["services"]
    registries = [name for name in services if name.startswith("registry")]
    assert len(registries) == 2
    for name in registries:
        env = {key: str(value) for key, value in services[name]["environment"].items()}
        settings = load_settings(path=tmp_path / f"{name}.yaml", env=env)
        assert settings.redis_sentinels and settings.redis_wait_replicas == 1


def test_the_registry_names_the_sentinels_and_master_the_compose_file_runs():
    services = compose()["services"]
    env = services["registry-1"]["environment"]
    sentinels = {address.split(":")[0] for address in env["REGISTRY_REDIS_SENTINELS"].split(",")}
    assert sentinels == {name for name in services if name.startswith("sentinel-")}
    script = services["sentinel-1"]["command"][-1]
    monitor = re.search(r"sentinel monitor (\S+) (\S+) (\d+) (\d+)", script)
    assert monitor and monitor.group(1) == env["REGISTRY_REDIS_MASTER_NAME"]
    assert monitor.group(2) in services and int(monitor.group(4)) == 2  # quorum of three
    replicas = [name for name in services if name.startswith("redis-replica")]
    assert len(replicas) >= env_int(env, "REGISTRY_REDIS_WAIT_REPLICAS") + 1  # one may fail


def env_int(env: dict, name: str) -> int:
    return int(env[name])
