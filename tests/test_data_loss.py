"""Redis lost its data: the leader notices within seconds and restores, merged with re-registrations."""
from __future__ import annotations

import dataclasses
import time
from typing import Iterator

import pytest
import requests

from app.config import Settings
from app.registry import Registry
from app.snapshot import LockBusy, take_snapshot

from .conftest import provider_body, wait_until
from .redis_server import RedisServer
from .test_leadership import PlainGunicorn


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it restarts empty (the session's stays up)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def health(server: PlainGunicorn) -> dict:
    return requests.get(f"{server.url}/health", timeout=5).json()


def test_redis_restarted_empty_is_restored_within_seconds_keeping_what_re_registered(
    own_redis: RedisServer, database_url: str, settings: Settings
) -> None:
    server = PlainGunicorn(
        own_redis.url, database_url=database_url, restore_on_empty="true", snapshot_interval_s=300,
        heartbeat_ttl_s=30, heartbeat_interval_s=10,
    )
    try:
        # The leader's first snapshot writes the generation marker.
        assert wait_until(lambda: health(server)["data"] == "ok", timeout=15), server.log()
        ids = [
            requests.post(f"{server.url}/providers", json=provider_body(name=f"rig-{i}"), timeout=5).json()["id"]
            for i in range(3)
        ]
        registry = Registry.from_settings(dataclasses.replace(settings, redis_url=own_redis.url))
        try:
            assert wait_until(lambda: _snapshot(registry, database_url), timeout=10)
        finally:
            registry.close()

        own_redis.stop()
        own_redis.start()  # empty: no persistence
        restarted_at = time.monotonic()
        # A daemon's heartbeat gets 404, so it registers again, with newer details.
        again = requests.post(
            f"{server.url}/providers", json=provider_body(id=ids[0], name="re-registered"), timeout=5
        )
        assert again.status_code in (200, 201), again.text
        states = {health(server)["data"]}

        def restored() -> bool:
            states.add(health(server)["data"])
            listed = requests.get(f"{server.url}/providers", timeout=5).json()
            return len(listed) == 3 and states.issuperset({"ok"})

        assert wait_until(restored, timeout=10, interval=0.05), server.log()
        took_s = time.monotonic() - restarted_at
        print(f"restored {took_s:.1f} s after redis-server restarted empty; /health said {sorted(states)}")
        assert states & {"lost", "restoring"}  # /health said so meanwhile
        providers = {p["id"]: p for p in requests.get(f"{server.url}/providers", timeout=5).json()}
        assert (providers[ids[0]]["name"], providers[ids[0]]["status"]) == ("re-registered", "idle")
        assert [providers[i]["status"] for i in ids[1:]] == ["offline", "offline"]
        assert health(server)["data"] == "ok"  # the restore wrote the marker: snapshots resume
    finally:
        server.stop()


def _snapshot(registry: Registry, database_url: str) -> bool:
    try:
        take_snapshot(registry.store, database_url)
    except LockBusy:
        return False  # the leader's own snapshot holds the lock
    return True


def test_health_says_the_data_set_is_ok_restoring_or_lost(make_app, redis_db, database_url) -> None:
    client = make_app(database_url=database_url).test_client()

    redis_db.set("registry:generation", "g1")
    assert client.get("/health").get_json()["data"] == "ok"
    redis_db.delete("registry:generation")
    assert client.get("/health").get_json()["data"] == "lost"
    redis_db.set("registry:restoring", "leader", px=5000)
    response = client.get("/health")
    assert (response.status_code, response.get_json()["data"]) == (200, "restoring")


def test_health_without_snapshots_has_no_data_set_to_lose(client, redis_db) -> None:
    assert redis_db.get("registry:generation") is None
    assert client.get("/health").get_json()["data"] == "ok"
