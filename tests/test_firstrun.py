"""First run without ceremony: `provider-registry serve --first-run-key`, what `make run` runs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import requests
import yaml

from app.keyring import hash_secret

from .conftest import ADMIN_KEY, TEST_API_KEYS
from .redis_server import RedisServer
from .test_serving import Instance

KEY_LINE = re.compile(r"^    ([A-Za-z0-9_-]{43})$", re.M)


def listing(instance: Instance, key: str) -> int:
    return requests.get(f"{instance.url}/providers", headers={"Authorization": f"Bearer {key}"}, timeout=5).status_code


def test_the_first_run_makes_an_admin_key_once_and_later_runs_read_its_hash(tmp_path: Path, redis_server: RedisServer) -> None:
    first = Instance(tmp_path, redis_server.url, "--first-run-key", auth_enabled="true")
    try:
        printed = KEY_LINE.findall(first.log.read_text())
        assert len(printed) == 1, first.log.read_text()
        key = printed[0]
        assert listing(first, key) == 200
        assert listing(first, "not-the-key") == 401
    finally:
        first.stop()
    kept = (tmp_path / "var" / "keys.yaml").read_text()
    assert key not in kept
    assert yaml.safe_load(kept)["api_keys"][0]["sha256"] == hash_secret(key)
    assert (tmp_path / "var" / "keys.yaml").stat().st_mode & 0o077 == 0

    second = Instance(tmp_path, redis_server.url, "--first-run-key", auth_enabled="true")
    try:
        assert KEY_LINE.findall(second.log.read_text()) == []
        assert "using the service keys of var/keys.yaml" in second.log.read_text()
        assert listing(second, key) == 200
    finally:
        second.stop()


def test_no_key_is_made_when_keys_are_configured(tmp_path: Path, redis_server: RedisServer) -> None:
    served = Instance(
        tmp_path, redis_server.url, "--first-run-key", auth_enabled="true", api_keys=json.dumps(TEST_API_KEYS)
    )
    try:
        assert listing(served, ADMIN_KEY) == 200
    finally:
        served.stop()
    assert not (tmp_path / "var" / "keys.yaml").exists()


def test_no_key_is_made_outside_make_run(tmp_path: Path, redis_server: RedisServer) -> None:
    served = Instance(tmp_path, redis_server.url, auth_enabled="true")
    served.stop()
    assert not (tmp_path / "var").exists()
    assert KEY_LINE.findall(served.log.read_text()) == []
