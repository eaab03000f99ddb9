"""Serving under gunicorn: the API, jobs elected among the workers, the WSGI entry."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests

from app.local_redis import reachable

from .conftest import gpu, provider_body, wait_until
from .redis_server import free_port

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "provider-registry")


def children(pid: int) -> dict[int, str]:
    """The live child processes of `pid`, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def jobs_processes(pid: int) -> list[int]:
    return [child for child, cmd in children(pid).items() if "app.cli jobs" in cmd]


class Instance:
    """One `provider-registry serve` on a free loopback port, its output in a file."""

    def __init__(
        self, tmp_path: Path, redis_url: str, *args: str, **settings: str
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env.update(
            REGISTRY_CONFIG=str(tmp_path / "config.yaml"),
            REGISTRY_BIND_HOST="127.0.0.1",
            REGISTRY_PORT=str(self.port),
            REGISTRY_REDIS_URL=redis_url,
            REGISTRY_WORKERS="2",
            REGISTRY_THREADS="2",
            # Never register test instances with whatever Consul agent this machine may run.
            REGISTRY_CONSUL_ENABLED="false",
            # These tests are about serving; auth and rate limits have their own tests.
            REGISTRY_AUTH_ENABLED="false",
            REGISTRY_RATE_LIMIT_ENABLED="false",
            XDG_RUNTIME_DIR=str(tmp_path),  # gunicorn's control socket: one per instance
        )
        env.update({f"REGISTRY_{k.upper()}": v for k, v in settings.items()})
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [CLI, "serve", *args], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.started: set[int] = set()
        try:
            if not wait_until(self.healthy, timeout=30, interval=0.1):
                pytest.fail(f"gunicorn did not serve:\n{self.log.read_text()}")
            self.started = set(children(self.process.pid))
        except BaseException:
            self.started = set(children(self.process.pid))
            self.stop()
            raise

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"gunicorn exited:\n{self.log.read_text()}")
        try:
            return requests.get(f"{self.url}/health", timeout=5).status_code == 200
        except requests.RequestException:  # not listening yet, or a worker still booting
            return False

    def log_lines(self) -> list[dict]:
        lines = []
        for raw in self.log.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                pass
        return lines

    def stop(self) -> None:
        """Stop gunicorn; make sure none of its processes outlive the test."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in self.started:
            if wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=10):
                continue
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def instance(tmp_path, redis_server, redis_db) -> Iterator[Instance]:
    served = Instance(tmp_path, redis_server.url, heartbeat_ttl_s="1", heartbeat_interval_s="0.5",
                      sweep_interval_s="0.2")
    try:
        yield served
    finally:
        served.stop()


def test_gunicorn_serves_the_api_and_one_elected_worker_sweeps(instance, redis_db):
    # The API, end to end over HTTP.
    created = requests.post(f"{instance.url}/providers", json=provider_body(status="busy"), timeout=5)
    assert created.status_code == 201
    provider_id = created.json()["id"]
    assert created.json()["heartbeat_ttl_s"] == 1
    beat = requests.post(f"{instance.url}/api/v1/providers/{provider_id}/heartbeat", timeout=5)
    assert beat.status_code == 200 and beat.json()["status"] == "busy"
    listed = requests.get(f"{instance.url}/providers?status=busy", timeout=5)
    assert [p["id"] for p in listed.json()] == [provider_id]
    assert listed.headers["X-Total-Count"] == "1"
    missing = requests.get(f"{instance.url}/nope", timeout=5)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"

    # Two workers and no jobs process without Consul: the workers elect the one that sweeps.
    kids = children(instance.process.pid)
    assert len(jobs_processes(instance.process.pid)) == 0 and len(kids) == 2
    leader = redis_db.get("registry:lock:leader")
    assert leader is not None and int(leader.split(":")[1]) in kids

    # The leader sweeps the lapsed lease and logs the transition as a JSON line.
    assert wait_until(
        lambda: redis_db.zscore("registry:status:offline", provider_id) is not None, timeout=10
    )
    assert wait_until(
        lambda: any(line.get("provider_id") == provider_id for line in instance.log_lines()),
        timeout=5,
    )
    [swept] = [line for line in instance.log_lines() if line.get("provider_id") == provider_id]
    assert swept["message"] == "provider offline: lease lapsed"
    assert swept["previous_status"] == "busy"
    # Each request left one access line with its request ID.
    access = [line for line in instance.log_lines() if line.get("logger") == "app.access"]
    assert {"request_id", "method", "path", "status", "duration_ms"} <= set(access[-1])


def test_chunked_body_over_64_kib_is_413_under_gunicorn(instance):
    raw = json.dumps(provider_body(metadata={"blob": "x" * (64 * 1024)})).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 8192):
            yield raw[start : start + 8192]

    response = requests.post(
        f"{instance.url}/providers", data=chunks(),
        headers={"Content-Type": "application/json"}, timeout=10,
    )
    assert response.status_code == 413
    assert response.json()["code"] == "request_entity_too_large"
    small = json.dumps(provider_body(gpus=[gpu()])).encode()
    response = requests.post(
        f"{instance.url}/providers", data=iter([small[:10], small[10:]]),
        headers={"Content-Type": "application/json"}, timeout=10,
    )
    assert response.status_code == 201


@pytest.fixture
def consul_instance(tmp_path, redis_server, redis_db, agent) -> Iterator[Instance]:
    """An instance registering with the agent double: its master starts the Consul process."""
    served = Instance(tmp_path, redis_server.url, consul_enabled="true", consul_address=agent.address,
                      advertise_address="127.0.0.1")
    try:
        assert wait_until(lambda: len(jobs_processes(served.process.pid)) == 1, timeout=10)
        served.started = set(children(served.process.pid))
        yield served
    finally:
        served.stop()


def test_with_consul_one_process_registers_the_instance_not_the_workers(consul_instance, agent):
    assert wait_until(lambda: len(agent.services) == 1, timeout=15)
    [jobs] = jobs_processes(consul_instance.process.pid)
    registering = [line for line in consul_instance.log_lines() if line.get("message") == "registered in consul"]
    # The workers found the instance lock held by the master and left Consul to its child.
    assert not any("registers the instance in consul" in str(line.get("message")) for line in consul_instance.log_lines())
    assert len(registering) == 1 and jobs in children(consul_instance.process.pid)


def test_stopping_gunicorn_stops_its_jobs_process(consul_instance):
    instance = consul_instance
    [jobs] = jobs_processes(instance.process.pid)
    instance.process.send_signal(signal.SIGTERM)
    instance.process.wait(timeout=30)
    assert wait_until(lambda: not Path(f"/proc/{jobs}").exists(), timeout=15)


def test_jobs_process_exits_when_the_master_dies(consul_instance):
    instance = consul_instance
    [jobs] = jobs_processes(instance.process.pid)
    instance.process.kill()
    instance.process.wait(timeout=10)
    # It notices the parent is gone within a second or two; its workers do the same.
    assert wait_until(lambda: not Path(f"/proc/{jobs}").exists(), timeout=15)


def test_top_level_wsgi_module_exposes_the_app(tmp_path, redis_server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(REGISTRY_CONFIG=str(tmp_path / "config.yaml"), REGISTRY_REDIS_URL=redis_server.url)
    code = (
        "import flask, wsgi; assert isinstance(wsgi.app, flask.Flask); "
        "print(sorted(r.rule for r in wsgi.app.url_map.iter_rules()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "/api/v1/providers/<uuid:provider_id>/heartbeat" in result.stdout
    assert "/health" in result.stdout


def test_serve_local_redis_starts_a_redis_when_none_answers_and_stops_it_after(tmp_path):
    # What `make run` does on a machine with no Redis running.
    redis_port = free_port()
    served = Instance(tmp_path, f"redis://127.0.0.1:{redis_port}/0", "--local-redis")
    try:
        created = requests.post(f"{served.url}/providers", json=provider_body(), timeout=5)
        assert created.status_code == 201
        assert (tmp_path / "var" / "redis").is_dir()
    finally:
        served.stop()
    assert wait_until(lambda: not reachable(f"redis://127.0.0.1:{redis_port}/0"), timeout=10)
