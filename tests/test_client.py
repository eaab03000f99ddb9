"""The Python client library (app/client.py) against the registry under real gunicorn."""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterator

import pytest
import requests

from app.client import (
    ApiError,
    Claim,
    Conflict,
    Forbidden,
    NotFound,
    ProviderDaemon,
    RegistryClient,
    RegistryUnreachable,
    Scheduler,
    Unauthorized,
)

from .conftest import ADMIN_KEY, READ_KEY, REGISTER_KEY, SCHEDULE_KEY, TEST_API_KEYS, gpu, provider_body, wait_until
from .gunicorn_server import GunicornServer
from .redis_server import RedisServer, free_port


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[GunicornServer]:
    """One registry with auth on and a quick rhythm, shared by the module (Redis is emptied per test)."""
    served = GunicornServer(
        redis_server.url, auth_enabled="true", api_keys=json.dumps(TEST_API_KEYS),
        heartbeat_ttl_s=1.0, heartbeat_interval_s=0.25, sweep_interval_s=0.1, workers=2,
    )
    served.start()
    yield served
    served.stop()


@pytest.fixture
def admin(server: GunicornServer, redis_db: Any) -> RegistryClient:
    return RegistryClient(server.url, ADMIN_KEY, backoff_s=0.05)


def test_every_route_has_a_method(admin: RegistryClient) -> None:
    assert admin.health()["status"] == "ok"
    assert "/providers" in admin.openapi()["paths"]
    created = admin.register(provider_body())
    pid = created["id"]
    assert created["provider_token"] and created["heartbeat_interval_s"] == 0.25
    assert admin.heartbeat(pid, gpu_metrics=[{"utilization_gpu_percent": 50}])["status"] == "idle"
    assert admin.set_status(pid, "maintenance")["status"] == "maintenance"
    assert admin.set_status(pid, "idle")["status"] == "idle"
    updated = admin.update(pid, provider_body(name="renamed"))
    assert updated["name"] == "renamed"
    assert admin.get(pid)["name"] == "renamed"
    assert [p["id"] for p in admin.list_providers(gpu_model="a100", status=["idle"])] == [pid]
    assert admin.list_providers(gpu_model="h100") == []
    assert admin.summary()["by_status"]["idle"] == 1
    position = admin.events()["next"]
    token = admin.rotate_token(pid)
    assert RegistryClient(admin.url, token).heartbeat(pid)["status"] == "idle"
    assert "registry_http_requests_total" in admin.metrics()
    admin.delete(pid)
    assert [e["type"] for e in admin.events(position)["events"]][-1] == "deregistered"
    with pytest.raises(NotFound):
        admin.get(pid)


def test_errors_are_exceptions_carrying_the_json_code(admin: RegistryClient, server: GunicornServer) -> None:
    with pytest.raises(NotFound) as missing:
        admin.get("3f2b8c1e-5d4a-4e6b-9c7d-1a2b3c4d5e6f")
    assert missing.value.status == 404 and missing.value.code == "provider_not_found"
    with pytest.raises(Forbidden) as refused:
        RegistryClient(server.url, REGISTER_KEY).list_providers()
    assert refused.value.code == "forbidden" and refused.value.details["required_roles"] == ["read", "admin"]
    with pytest.raises(Unauthorized):
        RegistryClient(server.url, "not-a-key").summary()
    with pytest.raises(Conflict) as no_capacity:
        admin.claim(1)
    assert no_capacity.value.code == "no_capacity"
    with pytest.raises(ApiError) as invalid:
        admin.register({"name": "no gpus"})
    assert invalid.value.code == "validation_error" and invalid.value.details


def test_listing_pages_follow_the_link_header(admin: RegistryClient) -> None:
    ids = {admin.register(provider_body(name=f"rig-{i}"))["id"] for i in range(7)}
    assert len(admin.list_providers(limit=3)) == 3
    assert {p["id"] for p in admin.iter_providers(page_size=3)} == ids


def test_writes_carry_an_idempotency_key_and_a_retry_is_answered_once(admin: RegistryClient) -> None:
    sent: list[dict[str, str]] = []
    admin.session.hooks["response"].append(lambda r, *a, **k: sent.append(dict(r.request.headers)))
    admin.register(provider_body())
    admin.list_providers()
    assert "Idempotency-Key" in sent[0] and "Idempotency-Key" not in sent[1]
    key = {"Idempotency-Key": "client-test-1"}
    first = admin.request("POST", "/providers", json=provider_body(), headers=key)
    again = admin.request("POST", "/providers", json=provider_body(), headers=key)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == again.json()["id"]
    assert len(admin.list_providers()) == 2


def test_retries_wait_as_long_as_retry_after_says(redis_server: RedisServer, redis_db: Any) -> None:
    limited = GunicornServer(
        redis_server.url, auth_enabled="true", api_keys=json.dumps(TEST_API_KEYS),
        rate_limit_enabled="true", rate_limit_per_client="2/second", workers=1,
    )
    limited.start()
    try:
        client = RegistryClient(limited.url, READ_KEY, backoff_s=0.01)
        waits: list[float | None] = []
        real_sleep = client._sleep
        client._sleep = lambda attempt, retry_after: (waits.append(retry_after), real_sleep(attempt, retry_after))
        for _ in range(5):
            client.summary()  # each one answers in the end
        # None: a pooled connection gunicorn closed meanwhile (keep-alive 2 s), retried at once.
        told = [w for w in waits if w is not None]
        assert told and all(w >= 1 for w in told)
        no_retries = RegistryClient(limited.url, READ_KEY, retries=0)
        with pytest.raises(ApiError) as refused:
            for _ in range(5):
                no_retries.summary()
        assert refused.value.status == 429 and refused.value.retry_after_s >= 1
    finally:
        limited.stop()


def test_an_unreachable_registry_raises_after_the_retries() -> None:
    client = RegistryClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.01)
    with pytest.raises(RegistryUnreachable):
        client.health()


def test_the_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, server: GunicornServer, redis_db: Any) -> None:
    monkeypatch.setenv("REGISTRY_URL", server.url)
    monkeypatch.setenv("REGISTRY_KEY", READ_KEY)
    assert RegistryClient().summary()["by_status"]["idle"] == 0


# -- the daemon helper ------------------------------------------------------------------------


def test_the_daemon_heartbeats_at_the_advertised_rhythm_and_stops_cleanly(admin: RegistryClient, server: GunicornServer) -> None:
    daemon = ProviderDaemon(RegistryClient(server.url, REGISTER_KEY), provider_body()).start()
    try:
        assert daemon.interval_s == 0.25
        assert wait_until(lambda: daemon.heartbeats >= 6, timeout=5)
        # Longer than the 1 s lease: only the heartbeats keep it online.
        assert admin.get(daemon.provider_id)["status"] == "idle"
    finally:
        started = time.monotonic()
        daemon.stop()
    assert time.monotonic() - started < 1
    count = daemon.heartbeats
    time.sleep(0.6)
    assert daemon.heartbeats == count
    assert wait_until(lambda: admin.get(daemon.provider_id)["status"] == "offline", timeout=5)


def test_the_daemon_registers_again_under_its_id_when_the_registry_forgot_it(admin: RegistryClient, server: GunicornServer) -> None:
    daemon = ProviderDaemon(RegistryClient(server.url, REGISTER_KEY), provider_body()).start()
    try:
        pid = daemon.provider_id
        admin.delete(pid)
        assert wait_until(lambda: daemon.registrations == 2, timeout=5)
        assert daemon.provider_id == pid
        assert admin.get(pid)["status"] == "idle"
    finally:
        daemon.stop(deregister=True)
    with pytest.raises(NotFound):
        admin.get(pid)


# -- the scheduler helper ---------------------------------------------------------------------


def test_the_scheduler_claims_confirms_releases_and_follows_the_feed(admin: RegistryClient, server: GunicornServer) -> None:
    for name in ("a", "b", "c"):
        admin.register(provider_body(name=name, gpus=[gpu("NVIDIA H100")]))
    scheduler = Scheduler(RegistryClient(server.url, SCHEDULE_KEY), claimant="job-7")
    stop = threading.Event()
    seen: list[dict[str, Any]] = []
    position = admin.events()["next"]

    def follow() -> None:
        for event in scheduler.follow(position, wait_s=1, stop=stop):
            seen.append(event)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    claim = scheduler.claim(2, gpu_model="h100", claim_ttl_s=30)
    assert isinstance(claim, Claim) and len(claim.provider_ids) == 2
    assert all(p["status"] == "busy" for p in scheduler.confirm(claim))
    scheduler.release(claim)
    scheduler.release(claim)  # a second release is a no-op, not an error
    assert all(admin.get(pid)["status"] == "idle" for pid in claim.provider_ids)
    assert wait_until(lambda: sum(e["type"] == "claim_released" for e in seen) == 2, timeout=5), seen
    stop.set()
    follower.join(timeout=5)
    assert not follower.is_alive()
