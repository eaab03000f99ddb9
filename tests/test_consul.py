"""Consul self-registration (app/jobs/consul.py), driven over real HTTP against the agent double.

No Consul binary is available here: tests/consul_agent.py stands in for the agent.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from typing import Iterator

import consul
import pytest

from app.config import ConfigError, Settings, load_settings, parse_duration
from app.jobs.consul import (
    ConsulRegistration,
    backoff_delays,
    host_address,
    local_health_url,
    service_definition,
)
from app.jobs.runner import JobRunner

from .conftest import wait_until
from .consul_agent import ConsulAgent

CONSUL_LOGGER = "app.jobs.consul"


@pytest.fixture
def consul_settings(settings: Settings, agent: ConsulAgent) -> Settings:
    return dataclasses.replace(
        settings, consul_address=agent.address, advertise_address="127.0.0.1", consul_tags=["gpu", "api"]
    )


class Running:
    """A ConsulRegistration loop in a thread, stopped (and so deregistered) at teardown."""

    def __init__(self, job: ConsulRegistration) -> None:
        self.job = job
        self.thread = threading.Thread(target=job.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.job.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.fixture
def run_registration() -> Iterator:
    running: list[Running] = []

    def start(settings: Settings, port: int = 8080, **kwargs) -> ConsulRegistration:
        job = ConsulRegistration(settings, port, "1.2.3", **kwargs)
        running.append(Running(job))
        return job

    yield start
    for r in running:
        r.stop()


def consul_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records
        if r.name == CONSUL_LOGGER and r.levelno == logging.WARNING and text in r.getMessage()
    ]


# Settings ------------------------------------------------------------------------------------


def test_consul_settings_default_to_the_original_service_values(tmp_path):
    s = load_settings(tmp_path / "c.yaml", env={})
    assert (s.consul_enabled, s.consul_check) == (True, "http")
    assert (s.consul_check_interval, s.consul_check_timeout, s.consul_deregister_after) == ("10s", "2s", "1m")
    assert (s.consul_ttl, s.consul_resync_interval) == ("15s", "30s")
    assert (s.advertise_address, s.advertise_port, s.consul_tags) == ("", 0, [])


def test_every_consul_setting_is_read_from_its_registry_variable(tmp_path):
    env = {
        "REGISTRY_CONSUL_ENABLED": "false",
        "REGISTRY_CONSUL_ADDRESS": "consul.internal:8501",
        "REGISTRY_SERVICE_NAME": "gpu-registry",
        "REGISTRY_SERVICE_ID_PREFIX": "reg-",
        "REGISTRY_CONSUL_TAGS": "gpu, eu-west",
        "REGISTRY_ADVERTISE_ADDRESS": "10.1.2.3",
        "REGISTRY_ADVERTISE_PORT": "9090",
        "REGISTRY_CONSUL_CHECK": "ttl",
        "REGISTRY_CONSUL_CHECK_INTERVAL": "5s",
        "REGISTRY_CONSUL_CHECK_TIMEOUT": "500ms",
        "REGISTRY_CONSUL_DEREGISTER_AFTER": "2m",
        "REGISTRY_CONSUL_TTL": "20s",
        "REGISTRY_CONSUL_RESYNC_INTERVAL": "1m30s",
    }
    s = load_settings(tmp_path / "c.yaml", env=env)
    assert s.consul_enabled is False
    assert (s.consul_address, s.service_name, s.service_id_prefix) == ("consul.internal:8501", "gpu-registry", "reg-")
    assert s.consul_tags == ["gpu", "eu-west"]
    assert (s.advertise_address, s.advertise_port, s.consul_check) == ("10.1.2.3", 9090, "ttl")
    assert (s.consul_check_interval, s.consul_check_timeout) == ("5s", "500ms")
    assert (s.consul_deregister_after, s.consul_ttl, s.consul_resync_interval) == ("2m", "20s", "1m30s")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("consul_check", "tcp", "consul_check must be one of http, ttl"),
        ("consul_ttl", "15", "consul_ttl must be a duration"),
        ("consul_check_interval", "0s", "consul_check_interval must be positive"),
        ("consul_address", "consul", "consul_address must be host:port"),
        ("advertise_port", "70000", "advertise_port must be between 0 and 65535"),
    ],
)
def test_bad_consul_settings_are_config_errors(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path / "c.yaml", env={f"REGISTRY_{key.upper()}": value})


def test_durations_are_read_as_consul_writes_them():
    assert parse_duration("10s") == 10
    assert parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5
    with pytest.raises(ValueError):
        parse_duration("10")


# What is registered ------------------------------------------------------------------------


def test_service_id_is_the_prefix_then_host_and_port_so_a_restart_reuses_it(consul_settings):
    first = service_definition(consul_settings, 8123, "1.0.0")
    again = service_definition(consul_settings, 8123, "1.0.0")
    assert first.service_id == again.service_id == f"provider-registry-{socket.gethostname()}-8123"
    assert service_definition(consul_settings, 8124, "1.0.0").service_id != first.service_id


def test_http_check_polls_the_advertised_health_url_with_the_configured_timings(consul_settings):
    settings = dataclasses.replace(consul_settings, advertise_address="10.0.0.7", advertise_port=9000)
    d = service_definition(settings, 41234, "1.0.0")
    assert (d.address, d.port) == ("10.0.0.7", 9000)
    assert d.check["http"] == "http://10.0.0.7:9000/health"
    assert (d.check["interval"], d.check["timeout"]) == ("10s", "2s")
    assert d.check["DeregisterCriticalServiceAfter"] == "1m"
    assert d.check["CheckID"] == d.check_id


def test_ttl_check_carries_the_ttl_and_the_deregistration_delay(consul_settings):
    d = service_definition(dataclasses.replace(consul_settings, consul_check="ttl"), 8080, "1.0.0")
    assert d.check["ttl"] == "15s"
    assert d.check["DeregisterCriticalServiceAfter"] == "1m"
    assert "http" not in d.check
    assert d.ttl_s == 15


def test_default_advertised_address_is_not_loopback_when_the_host_has_a_route():
    address = host_address("127.0.0.1")
    socket.inet_aton(address)  # An IPv4 address, whatever the machine.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            pytest.skip("this machine has no default route")
        assert address == probe.getsockname()[0] != "127.0.0.1"


def test_the_instance_asks_its_own_health_on_loopback_when_bound_to_every_interface(consul_settings):
    assert local_health_url(dataclasses.replace(consul_settings, bind_host="0.0.0.0"), 8080) == (
        "http://127.0.0.1:8080/health"
    )
    assert local_health_url(dataclasses.replace(consul_settings, bind_host="10.0.0.5"), 8080) == (
        "http://10.0.0.5:8080/health"
    )


def test_registration_sends_name_id_address_port_tags_meta_and_one_check(agent, consul_settings, run_registration):
    job = run_registration(consul_settings, port=18080)
    assert wait_until(lambda: agent.registrations())
    body = agent.registrations()[0].body
    assert body["name"] == "provider-registry"
    assert body["id"] == job.definition.service_id
    assert (body["address"], body["port"]) == ("127.0.0.1", 18080)
    assert body["tags"] == ["gpu", "api"]
    assert body["meta"] == {"version": "1.2.3"}
    assert len(body["checks"]) == 1 and body["checks"][0]["CheckID"] == job.definition.check_id
    assert "check" not in body  # py-consul 1.8 sends "checks"; python-consul 1.1 sent "check".
    service = agent.services[job.definition.service_id]
    assert service["Meta"] == {"version": "1.2.3"}


# Backoff, outages, resync --------------------------------------------------------------------


def test_retries_back_off_from_one_second_doubling_to_thirty():
    delays = backoff_delays()
    assert [next(delays) for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_unreachable_agent_logs_one_warning_per_outage_and_registers_when_it_answers(
    agent, consul_settings, run_registration, caplog
):
    caplog.set_level(logging.INFO, logger=CONSUL_LOGGER)
    agent.stop()
    run_registration(consul_settings, retry_initial_s=0.02, retry_max_s=0.05)
    # Many retries happen while the agent is down; one warning tells the operator.
    assert wait_until(lambda: consul_warnings(caplog, "unreachable"), timeout=5)
    threading.Event().wait(0.5)
    assert len(consul_warnings(caplog, "unreachable")) == 1
    assert agent.registrations() == []

    agent.start()
    assert wait_until(lambda: len(agent.services) == 1, timeout=5)
    # Logged once the registration that answered returns: just after the agent saw it.
    assert wait_until(
        lambda: any(r.getMessage() == "consul agent reachable again" for r in caplog.records), timeout=5
    )


def test_a_second_outage_gets_its_own_single_warning(agent, consul_settings, run_registration, caplog):
    caplog.set_level(logging.INFO, logger=CONSUL_LOGGER)
    settings = dataclasses.replace(consul_settings, consul_resync_interval="100ms")
    run_registration(settings, retry_initial_s=0.02, retry_max_s=0.05)
    assert wait_until(lambda: len(agent.services) == 1)
    agent.failing = True  # The agent answers 500, as one without a leader does.
    assert wait_until(lambda: consul_warnings(caplog, "unreachable"), timeout=5)
    threading.Event().wait(0.5)
    assert len(consul_warnings(caplog, "unreachable")) == 1
    agent.failing = False
    assert wait_until(lambda: any(r.getMessage() == "consul agent reachable again" for r in caplog.records))
    agent.stop()
    assert wait_until(lambda: len(consul_warnings(caplog, "unreachable")) == 2, timeout=5)
    threading.Event().wait(0.3)
    assert len(consul_warnings(caplog, "unreachable")) == 2


def test_agent_that_forgot_the_service_gets_it_registered_again(agent, consul_settings, run_registration):
    settings = dataclasses.replace(consul_settings, consul_resync_interval="200ms")
    job = run_registration(settings)
    assert wait_until(lambda: job.definition.service_id in agent.services)
    agent.restart_empty()
    assert job.definition.service_id not in agent.services
    assert wait_until(lambda: job.definition.service_id in agent.services, timeout=5)
    assert len(agent.registrations()) == 2


def test_a_known_service_is_checked_not_registered_again(agent, consul_settings, run_registration):
    settings = dataclasses.replace(consul_settings, consul_resync_interval="100ms")
    job = run_registration(settings)
    service_path = f"/v1/agent/service/{job.definition.service_id}"
    assert wait_until(lambda: len(agent.requests("GET", service_path)) >= 3, timeout=5)
    assert len(agent.registrations()) == 1


def test_stopping_deregisters_once_and_registers_nothing_after(agent, consul_settings, run_registration):
    settings = dataclasses.replace(consul_settings, consul_resync_interval="50ms")
    job = ConsulRegistration(settings, 8080, "1.2.3")
    running = Running(job)
    assert wait_until(lambda: job.definition.service_id in agent.services)
    running.stop()
    assert agent.services == {}
    assert len(agent.deregistrations()) == 1
    last_deregistration = agent.deregistrations()[-1].at
    threading.Event().wait(0.3)
    assert [c for c in agent.registrations() if c.at > last_deregistration] == []


def test_stopping_without_ever_registering_sends_no_deregistration(agent, consul_settings):
    agent.failing = True
    job = ConsulRegistration(consul_settings, 8080, "1.2.3", retry_initial_s=0.02, retry_max_s=0.02)
    running = Running(job)
    assert wait_until(lambda: len(agent.registrations()) >= 2)  # Refused with 500, retried.
    running.stop()
    assert agent.deregistrations() == []


# TTL check -----------------------------------------------------------------------------------


@pytest.fixture
def registry_app_server(app) -> Iterator[int]:
    """The Flask app served on a loopback port by werkzeug, so /health is asked over HTTP."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    thread.join(timeout=5)


def test_ttl_check_passes_while_health_answers_and_fails_when_redis_is_down(
    agent, consul_settings, run_registration, registry_app_server, redis_server
):
    settings = dataclasses.replace(
        consul_settings, consul_check="ttl", consul_ttl="600ms", bind_host="127.0.0.1"
    )
    job = run_registration(settings, port=registry_app_server)
    check_id = job.definition.check_id
    assert wait_until(lambda: agent.check(check_id) and agent.check(check_id).status == "passing")
    assert agent.check(check_id).output == "GET /health: 200"
    assert [e["Service"]["ID"] for e in agent.passing("provider-registry")] == [job.definition.service_id]
    # Passed again before the TTL runs out, so it stays passing.
    threading.Event().wait(1.0)
    assert agent.check(check_id).status == "passing"

    redis_server.stop()
    try:
        assert wait_until(lambda: agent.check(check_id).status == "critical", timeout=5)
        assert "503" in agent.check(check_id).output
        assert agent.passing("provider-registry") == []
    finally:
        redis_server.start()
    assert wait_until(lambda: agent.check(check_id).status == "passing", timeout=5)


def test_ttl_check_the_agent_forgot_is_registered_again_at_the_next_report(
    agent, consul_settings, run_registration, registry_app_server
):
    settings = dataclasses.replace(consul_settings, consul_check="ttl", consul_ttl="600ms", bind_host="127.0.0.1")
    job = run_registration(settings, port=registry_app_server)
    assert wait_until(lambda: agent.check(job.definition.check_id) is not None)
    agent.restart_empty()
    assert wait_until(
        lambda: agent.check(job.definition.check_id) is not None
        and agent.check(job.definition.check_id).status == "passing",
        timeout=5,
    )


# /health, as Consul's check needs it --------------------------------------------------------


def test_health_answers_200_while_redis_answers_and_503_once_it_is_gone(client, redis_server):
    assert client.get("/health").status_code == 200
    redis_server.stop()
    try:
        response = client.get("/health")
        assert response.status_code == 503
        assert response.get_json()["redis"] == "unreachable"
    finally:
        redis_server.start()


def test_health_gives_up_on_a_hung_redis_well_before_the_check_timeout(client, redis_db, settings):
    check_timeout_s = parse_duration(settings.consul_check_timeout)
    assert client.get("/health").status_code == 200
    # Redis accepts and reads, and answers nothing for longer than the check timeout.
    redis_db.client_pause(int(check_timeout_s * 1250), all=True)
    started = time.monotonic()
    response = client.get("/health")
    elapsed = time.monotonic() - started
    # A 503 Consul can read, not a check timeout: PING and its retry share half the budget.
    assert response.status_code == 503
    assert elapsed < check_timeout_s


# Discovery, as the scheduler does it ---------------------------------------------------------


def test_scheduler_finds_the_instance_through_the_passing_health_api(
    agent, consul_settings, run_registration, registry_app_server
):
    settings = dataclasses.replace(consul_settings, bind_host="127.0.0.1", consul_check_interval="200ms")
    run_registration(settings, port=registry_app_server)
    scheduler = consul.Consul(host="127.0.0.1", port=agent.port)

    def passing() -> list:
        _, entries = scheduler.health.service("provider-registry", passing=True)
        return entries

    assert wait_until(passing, timeout=5)
    entry = passing()[0]
    assert (entry["Service"]["Address"], entry["Service"]["Port"]) == ("127.0.0.1", registry_app_server)


# The Consul process ----------------------------------------------------------------------------


def test_consul_process_runs_only_the_consul_loop_unless_disabled(consul_settings):
    enabled = JobRunner(consul_settings, bound_port=8123)
    disabled = JobRunner(dataclasses.replace(consul_settings, consul_enabled=False))
    [registration] = enabled.jobs  # Consul only: the elected jobs run in the serving processes.
    assert isinstance(registration, ConsulRegistration) and registration.definition.port == 8123
    assert disabled.jobs == []
