"""The operator commands of `provider-registry` (app/opscli.py), over HTTP to a running registry."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from app.client import NotFound, RegistryClient

from .conftest import ADMIN_KEY, READ_KEY, TEST_API_KEYS, gpu, provider_body
from .gunicorn_server import GunicornServer
from .redis_server import RedisServer

CLI = str(Path(sys.executable).parent / "provider-registry")


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[GunicornServer]:
    served = GunicornServer(redis_server.url, auth_enabled="true", api_keys=json.dumps(TEST_API_KEYS))
    served.start()
    yield served
    served.stop()


@pytest.fixture
def admin(server: GunicornServer, redis_db: Any) -> RegistryClient:
    return RegistryClient(server.url, ADMIN_KEY)


@pytest.fixture
def fleet(admin: RegistryClient) -> dict[str, str]:
    return {
        name: admin.register(provider_body(name=name, location=location, gpus=[gpu(model)]))["id"]
        for name, model, location in [("rig-a", "NVIDIA A100", "eu-west"), ("rig-h", "NVIDIA H100", "us-east")]
    }


def cli(server: GunicornServer, *args: str, key: str | None = ADMIN_KEY, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    flags = ["--url", server.url] + (["--key", key] if key else [])
    return subprocess.run([CLI, *args, *flags], env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_providers_list_prints_a_table_with_the_apis_filters(server: GunicornServer, fleet: dict[str, str]) -> None:
    everything = cli(server, "providers", "list")
    assert everything.returncode == 0, everything.stderr
    header, *rows = everything.stdout.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "STATUS"]
    assert sorted(row.split()[1] for row in rows) == ["rig-a", "rig-h"]
    h100 = cli(server, "providers", "list", "--gpu-model", "h100", "--status", "idle", "--json")
    assert [p["id"] for p in json.loads(h100.stdout)] == [fleet["rig-h"]]
    assert json.loads(cli(server, "providers", "list", "--location", "nowhere", "--json").stdout) == []


def test_providers_show_prints_one_provider(server: GunicornServer, fleet: dict[str, str]) -> None:
    shown = cli(server, "providers", "show", fleet["rig-a"])
    assert shown.returncode == 0 and "rig-a" in shown.stdout and "NVIDIA A100" in shown.stdout
    assert json.loads(cli(server, "providers", "show", fleet["rig-a"], "--json").stdout)["id"] == fleet["rig-a"]


def test_drain_puts_the_provider_in_maintenance_and_rm_deregisters_it(
    server: GunicornServer, fleet: dict[str, str], admin: RegistryClient
) -> None:
    drained = cli(server, "providers", "drain", fleet["rig-a"])
    assert drained.returncode == 0 and "maintenance" in drained.stdout
    assert admin.get(fleet["rig-a"])["status"] == "maintenance"
    removed = cli(server, "providers", "rm", fleet["rig-a"])
    assert removed.returncode == 0, removed.stderr
    with pytest.raises(NotFound):
        admin.get(fleet["rig-a"])


def test_errors_are_one_line_with_the_code_and_exit_1(server: GunicornServer, fleet: dict[str, str]) -> None:
    malformed = cli(server, "providers", "show", "rig-a")
    assert malformed.returncode == 1
    assert "provider IDs are UUIDs" in malformed.stderr and "(provider_not_found)" in malformed.stderr
    read_only = cli(server, "providers", "drain", fleet["rig-a"], key=READ_KEY)
    assert read_only.returncode == 1 and "(forbidden)" in read_only.stderr
    assert "Traceback" not in malformed.stderr + read_only.stderr


def test_summary_prints_the_fleet_by_status_model_and_location(server: GunicornServer, fleet: dict[str, str]) -> None:
    summary = cli(server, "summary")
    assert summary.returncode == 0
    assert "nvidia h100" in summary.stdout and "us-east" in summary.stdout
    assert json.loads(cli(server, "summary", "--json").stdout)["by_status"]["idle"] == 2


def test_the_url_and_key_come_from_the_environment(server: GunicornServer, fleet: dict[str, str]) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env = {**clean, "REGISTRY_URL": server.url, "REGISTRY_KEY": READ_KEY}
    listed = subprocess.run([CLI, "providers", "list", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 2


def test_events_follow_prints_changes_as_they_happen(server: GunicornServer, admin: RegistryClient) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    follower = subprocess.Popen(
        [CLI, "events", "--follow", "--json", "--url", server.url, "--key", READ_KEY],
        env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(1.5)  # the follower has asked for the feed's position
        created = admin.register(provider_body(name="rig-new"))
        line = follower.stdout.readline()
        event = json.loads(line)
        assert event["type"] == "registered" and event["provider_id"] == created["id"]
    finally:
        follower.terminate()
        follower.communicate(timeout=10)  # also closes the pipes
    past = cli(server, "events", key=READ_KEY)
    assert created["id"] in past.stdout and "registered" in past.stdout
