"""Liveness with a 1 s lease: offline at the deadline in every answer, and the sweeper."""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from datetime import datetime

import pytest

from app.config import Settings
from app.jobs.sweeper import Sweeper
from app.registry import Registry

from .conftest import provider_body, wait_until


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, heartbeat_ttl_s=1, heartbeat_interval_s=0.5, sweep_interval_s=0.2)


def deadline_of(body: dict) -> float:
    """The lease deadline of an API answer, as a time.time() value."""
    return datetime.fromisoformat(body["lease_expires_at"].replace("Z", "+00:00")).timestamp()


def sleep_past(deadline: float, margin: float = 0.05) -> None:
    # Redis's clock and ours are the same machine's clock.
    time.sleep(max(0.0, deadline - time.time() + margin))


def test_register_advertises_the_configured_rhythm(providers):
    body = providers.register()
    assert body["heartbeat_ttl_s"] == 1 and body["heartbeat_interval_s"] == 0.5
    last_seen = datetime.fromisoformat(body["last_seen_at"].replace("Z", "+00:00")).timestamp()
    assert deadline_of(body) - last_seen == pytest.approx(1, abs=0.001)


def test_provider_is_offline_in_every_answer_at_the_deadline_without_a_sweeper(
    client, providers, redis_db
):
    body = providers.register(status="busy")
    assert providers.get(body["id"])["status"] == "busy"
    assert providers.ids("status=busy") == [body["id"]]
    # Prove the read path does not wait for Redis to expire the lease key.
    redis_db.persist(f"registry:lease:{body['id']}")

    sleep_past(deadline_of(body))

    assert providers.get(body["id"])["status"] == "offline"
    listed = client.get("/providers").get_json()
    assert [(p["id"], p["status"]) for p in listed] == [(body["id"], "offline")]
    assert providers.ids("status=busy") == []
    assert providers.ids("status=idle,busy,maintenance,error") == []
    assert providers.ids("status=offline") == [body["id"]]
    assert client.get("/providers?status=busy").headers["X-Total-Count"] == "0"
    # Nothing swept: the stored status is still the old one.
    assert redis_db.hget(f"registry:provider:{body['id']}", "status") == "busy"
    assert redis_db.zscore("registry:status:busy", body["id"]) == 0


def test_lease_key_expires_with_the_ttl(providers, redis_db):
    body = providers.register()
    assert 0 < redis_db.pttl(f"registry:lease:{body['id']}") <= 1000
    assert wait_until(lambda: not redis_db.exists(f"registry:lease:{body['id']}"), timeout=5)


def test_sweeper_moves_lapsed_providers_to_the_offline_index_and_logs_it(
    providers, registry, redis_db, caplog
):
    lapsing = providers.register(status="busy")
    sweeper = Sweeper(registry.store, interval_s=0.2)
    assert sweeper.sweep_once() == []  # nothing lapsed yet
    sleep_past(deadline_of(lapsing))
    fresh = providers.register()

    with caplog.at_level(logging.INFO, logger="app.jobs.sweeper"):
        transitions = sweeper.sweep_once()

    assert [(t.provider_id, t.previous_status, t.status) for t in transitions] == [
        (lapsing["id"], "busy", "offline")
    ]
    assert redis_db.zscore("registry:status:offline", lapsing["id"]) == 0
    assert redis_db.zscore("registry:status:busy", lapsing["id"]) is None
    assert redis_db.zscore("registry:leases", lapsing["id"]) is None
    assert redis_db.hget(f"registry:provider:{lapsing['id']}", "status") == "offline"
    assert redis_db.zscore("registry:leases", fresh["id"]) is not None
    assert redis_db.zscore("registry:status:idle", fresh["id"]) == 0
    [record] = [r for r in caplog.records if r.name == "app.jobs.sweeper"]
    assert record.levelno == logging.INFO
    assert record.provider_id == lapsing["id"]
    assert record.previous_status == "busy"
    assert "offline" in record.getMessage()
    # A second sweep has nothing left to do.
    assert sweeper.sweep_once() == []


def test_sweeper_turns_a_lapsed_provider_offline_within_about_a_second(providers, registry, redis_db):
    body = providers.register()
    sweeper = Sweeper(registry.store, interval_s=0.2)
    thread = threading.Thread(target=sweeper.run, daemon=True)
    thread.start()
    try:
        assert wait_until(
            lambda: redis_db.zscore("registry:status:offline", body["id"]) is not None, timeout=5
        )
        # About a second (sweep_interval_s is 0.2 here); generous, the machine is shared.
        assert time.time() - deadline_of(body) < 3
    finally:
        sweeper.stop()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_sweeper_works_in_batches_until_nothing_lapsed_is_left(providers, registry):
    bodies = [providers.register() for _ in range(5)]
    sleep_past(max(deadline_of(b) for b in bodies))
    transitions = Sweeper(registry.store, interval_s=0.2, batch=2).sweep_once()
    assert sorted(t.provider_id for t in transitions) == sorted(b["id"] for b in bodies)


def test_two_sweepers_on_one_redis_make_each_transition_once(providers, settings):
    bodies = [providers.register() for _ in range(40)]
    registries = [Registry.from_settings(settings) for _ in range(2)]
    sweepers = [Sweeper(r.store, interval_s=0.01, batch=3) for r in registries]
    made: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(2)

    def sweep(sweeper: Sweeper) -> None:
        start.wait(timeout=10)
        for _ in range(60):
            transitions = sweeper.sweep_once()
            with lock:
                made.extend(t.provider_id for t in transitions)

    sleep_past(max(deadline_of(b) for b in bodies))
    threads = [threading.Thread(target=sweep, args=(s,)) for s in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for registry in registries:
        registry.close()

    counts = collections.Counter(made)
    assert set(counts) == {b["id"] for b in bodies}
    assert set(counts.values()) == {1}


def test_sweeper_skips_a_provider_that_went_offline_by_itself(providers, registry):
    body = providers.register()
    providers.heartbeat(body["id"], status="offline")
    sleep_past(deadline_of(body))
    assert Sweeper(registry.store, interval_s=0.2).sweep_once() == []


def test_heartbeat_brings_a_lapsed_provider_back_idle(providers, registry):
    body = providers.register(status="busy")
    sleep_past(deadline_of(body))
    assert providers.get(body["id"])["status"] == "offline"

    back = providers.heartbeat(body["id"])

    assert back["status"] == "idle"
    assert providers.ids("status=idle") == [body["id"]]
    # A sweep right after must not turn it offline again.
    assert Sweeper(registry.store, interval_s=0.2).sweep_once() == []
    assert providers.get(body["id"])["status"] == "idle"


def test_heartbeat_brings_a_swept_provider_back_in_its_stated_status(providers, registry, redis_db):
    body = providers.register()
    sleep_past(deadline_of(body))
    Sweeper(registry.store, interval_s=0.2).sweep_once()
    assert providers.get(body["id"])["status"] == "offline"

    back = providers.heartbeat(body["id"], status="maintenance")

    assert back["status"] == "maintenance"
    assert redis_db.zscore("registry:status:maintenance", body["id"]) == 0
    assert redis_db.zscore("registry:status:offline", body["id"]) is None
    assert redis_db.zscore("registry:leases", body["id"]) is not None
    assert providers.ids("status=offline") == []


def test_heartbeats_at_the_advertised_interval_keep_a_provider_online(providers):
    body = providers.register()
    for _ in range(4):
        time.sleep(0.5)
        assert providers.heartbeat(body["id"])["status"] == "idle"
    assert providers.ids("status=idle") == [body["id"]]


def test_reregistration_brings_a_lapsed_provider_back(client, providers):
    body = providers.register()
    sleep_past(deadline_of(body))
    response = client.post("/providers", json=provider_body(id=body["id"]))
    assert response.status_code == 200
    assert response.get_json()["status"] == "idle"
    assert providers.ids("status=idle") == [body["id"]]
