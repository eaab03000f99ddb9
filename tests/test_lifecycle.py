"""The instance's life under a real gunicorn: startup, Consul registration, graceful shutdown.

Each test runs `provider-registry serve` (master, workers, jobs process) on an OS-chosen
loopback port, against the private Redis and the Consul agent double (tests/consul_agent.py;
no Consul binary is available here).
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import pytest

from app.version import package_version

from .conftest import wait_until
from .registry_process import ROOT, RegistryProcess


@pytest.fixture
def serve(tmp_path, redis_db, redis_server, agent) -> Iterator:
    """Start registry instances pointed at the agent double; end them all at teardown."""
    started: list[RegistryProcess] = []

    def start(**settings: Any) -> RegistryProcess:
        settings.setdefault("consul_address", agent.address)
        instance = RegistryProcess(tmp_path / f"instance-{len(started)}", redis_server, **settings)
        instance.workdir.mkdir()
        started.append(instance)
        instance.start()
        return instance

    yield start
    for instance in started:
        if instance.process is not None and instance.process.poll() is None:
            instance.signal(signal.SIGTERM)
            try:
                instance.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        instance.kill()


def test_instance_with_three_workers_registers_one_service_on_the_port_it_bound(serve, agent):
    registry = serve(workers=3, consul_tags="gpu,api")
    assert wait_until(lambda: agent.services, timeout=15)
    # Every worker is up and serving; still one registration for the instance.
    assert wait_until(lambda: sum("Booting worker" in m for m in registry.messages()) == 3, timeout=15)
    time.sleep(0.5)
    assert len(agent.registrations()) == 1

    (service,) = agent.services.values()
    assert service["ID"] == f"provider-registry-{socket.gethostname()}-{registry.port}"
    assert service["Service"] == "provider-registry"
    assert (service["Address"], service["Port"]) == ("127.0.0.1", registry.port)
    assert service["Tags"] == ["gpu", "api"]
    assert service["Meta"] == {"version": package_version()}
    (check,) = agent.registrations()[0].body["checks"]
    assert check["http"] == f"http://127.0.0.1:{registry.port}/health"
    assert (check["interval"], check["timeout"], check["DeregisterCriticalServiceAfter"]) == ("10s", "2s", "1m")
    # The agent's own HTTP check of /health passes, so discovery returns the instance.
    assert wait_until(lambda: agent.passing("provider-registry"), timeout=10)
    # The master's hooks import no redis/ssl before the gevent workers patch the stdlib.
    assert "MonkeyPatchWarning" not in registry.log_text()


def test_startup_logs_the_effective_configuration_once_with_passwords_masked(serve):
    registry = serve(
        database_url="postgresql://registry:s3cret@127.0.0.1:5432/registry", consul_check="ttl"
    )
    lines = [r for r in registry.records() if r.get("message") == "provider-registry starting"]
    assert len(lines) == 1
    (line,) = lines
    assert line["level"] == "INFO"
    assert line["bound_port"] == registry.port
    assert line["config"]["consul_check"] == "ttl"
    assert line["config"]["port"] == 0
    assert line["config"]["database_url"] == "postgresql://registry:***@127.0.0.1:5432/registry"
    assert "s3cret" not in registry.log_text()


def test_sigterm_deregisters_first_then_in_flight_requests_finish_and_redis_closes(
    serve, agent, redis_db
):
    registry = serve(workers=2, redis_timeout_s=10)
    assert wait_until(lambda: agent.services, timeout=15)
    service_id = next(iter(agent.services))

    # Hold every Redis command for 3 s: a query sent now stays in flight meanwhile.
    redis_db.client_pause(3000, all=True)
    result: dict[str, Any] = {}

    def in_flight() -> None:
        result["status"], result["body"] = registry.get("/providers", timeout=20)
        result["done_at"] = time.monotonic()

    request = threading.Thread(target=in_flight)
    request.start()
    time.sleep(0.3)
    registry.signal(signal.SIGTERM)

    assert wait_until(lambda: agent.deregistrations(), timeout=5)
    # The master goes on to stop the workers once the instance has left Consul ...
    assert wait_until(lambda: "instance left consul; stopping workers" in registry.messages(), timeout=5)
    # ... while the request is still in flight; the stopping worker finishes it.
    assert request.is_alive()
    request.join(timeout=20)
    assert (result["status"], result["body"]) == (200, [])
    assert agent.deregistrations()[0].at < result["done_at"]
    assert agent.deregistrations()[0].path.endswith(service_id)

    assert registry.wait(timeout=30) == 0
    assert agent.services == {}
    last = agent.deregistrations()[-1].at
    assert [c for c in agent.registrations() if c.at > last] == []
    messages = registry.messages()
    assert "background jobs stopped" in messages
    assert sum("closed its redis connections" in m for m in messages) == 2
    assert messages.index("deregistered from consul") < min(
        i for i, m in enumerate(messages) if m.startswith("Worker exiting")
    )


def test_sigint_deregisters_the_instance_too(serve, agent):
    registry = serve()
    assert wait_until(lambda: agent.services, timeout=15)
    registry.signal(signal.SIGINT)
    assert registry.wait(timeout=30) == 0
    assert agent.services == {}
    assert len(agent.deregistrations()) == 1


def test_consul_down_at_start_serves_anyway_warns_once_and_registers_when_it_comes_up(serve, agent):
    agent.stop()
    registry = serve()
    assert wait_until(lambda: any("unreachable" in m for m in registry.messages()), timeout=15)
    time.sleep(1.5)  # The first retry comes 1 s after the warning, and warns no more.
    assert sum("consul agent unreachable" in m for m in registry.messages()) == 1
    assert registry.get("/health")[0] == 200

    agent.start()
    assert wait_until(lambda: agent.services, timeout=20)
    assert wait_until(lambda: "consul agent reachable again" in registry.messages())


def test_agent_restarted_without_state_gets_the_service_registered_again(serve, agent):
    registry = serve(consul_resync_interval="500ms")
    assert wait_until(lambda: agent.services, timeout=15)
    service_id = next(iter(agent.services))
    agent.restart_empty()
    assert wait_until(lambda: service_id in agent.services, timeout=10)
    assert any("forgot the service" in m for m in registry.messages())


def test_ttl_check_passes_while_health_answers_and_stops_when_redis_is_down(serve, agent, redis_server):
    registry = serve(consul_check="ttl", consul_ttl="3s")
    assert wait_until(lambda: agent.services, timeout=15)
    (service_id,) = agent.services
    check_id = f"service:{service_id}"
    assert wait_until(lambda: agent.check(check_id) and agent.check(check_id).status == "passing", timeout=10)
    assert [e["Service"]["ID"] for e in agent.passing("provider-registry")] == [service_id]

    redis_server.stop()
    try:
        assert wait_until(lambda: agent.check(check_id).status == "critical", timeout=10)
        assert agent.passing("provider-registry") == []
        assert registry.get("/health")[0] == 503
    finally:
        redis_server.start()
    assert wait_until(lambda: agent.check(check_id).status == "passing", timeout=10)


def test_healthcheck_command_exits_zero_only_while_the_instance_is_healthy(serve, agent, redis_server):
    registry = serve(consul_enabled="false")
    assert agent.calls == []  # Consul disabled: not a single call to the agent.

    def healthcheck() -> int:
        env = {**registry.env, "REGISTRY_PORT": str(registry.port)}
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "healthcheck"], cwd=ROOT, env=env,
            capture_output=True, timeout=30,
        ).returncode

    assert healthcheck() == 0
    redis_server.stop()
    try:
        assert healthcheck() == 1
    finally:
        redis_server.start()
    registry.signal(signal.SIGTERM)
    assert registry.wait(timeout=30) == 0
    assert healthcheck() == 1
