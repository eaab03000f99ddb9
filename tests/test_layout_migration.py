"""Upgrading a Redis filled by the registry of layout 2, the release before GPU fragments.

tests/data/layout2_redis.json holds every key (but those with a TTL) that the registry of
layout 2 wrote for seven providers of different kinds, with the answers it gave for them and
the IDs some queries matched (tests/data/make_layout2_fixture.py made it). Loaded into a
fresh Redis and migrated to layout 3 in place, the registry answers the same and goes on
taking heartbeats; before the migration has run, it reads and writes the old hashes safely.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from app.jobs.sweeper import Sweeper
from app.registry import Registry
from app.store.migrations import LAYOUT_VERSION, migrate

from .conftest import bearer_client

FIXTURE = json.loads((Path(__file__).parent / "data" / "layout2_redis.json").read_text())
# What does not depend on the clock (the fixture's leases lapsed long ago).
L4 = {"model_name": "NVIDIA L4", "vram_mb": 24576, "driver_version": "550.54"}
STILL = ("id", "owner_id", "name", "hostname", "ip_address", "location", "gpus", "metadata",
         "registered_at", "last_seen_at", "version")


@pytest.fixture
def layout2(redis_db: redis.Redis) -> dict[str, Any]:
    """Fill the test's Redis with the fixture's keys, as the registry of layout 2 left them."""
    pipe = redis_db.pipeline()
    for key, value in FIXTURE["keys"].items():
        [(kind, data)] = value.items()
        if kind == "hash":
            pipe.hset(key, mapping=data)
        elif kind == "zset":
            pipe.zadd(key, dict(data))
        elif kind == "set":
            pipe.sadd(key, *data)
        elif kind == "string":
            pipe.set(key, data)
        elif kind == "stream":
            for fields in data:
                pipe.xadd(key, fields)
    pipe.execute()
    return FIXTURE


def still(answer: dict[str, Any]) -> dict[str, Any]:
    return {name: answer[name] for name in STILL}


def provider_hashes(redis_db: redis.Redis) -> dict[str, dict[str, str]]:
    return {key: redis_db.hgetall(key) for key in redis_db.scan_iter("registry:provider:*")}


def id_of(name: str) -> str:
    [provider_id] = [pid for pid, answer in FIXTURE["answers"].items() if answer["name"] == name]
    return provider_id


def test_the_fixture_is_layout_2(layout2: dict[str, Any], redis_db: redis.Redis) -> None:
    assert layout2["layout"] == redis_db.get("registry:layout") == "2"
    assert all("gpus" in fields and "gpu_specs" not in fields for fields in provider_hashes(redis_db).values())


def test_every_provider_and_query_answers_the_same_after_the_migration(
    layout2: dict[str, Any], registry: Registry, client: Any, redis_db: redis.Redis
) -> None:
    assert migrate(registry.store) == 2
    assert redis_db.get("registry:layout") == str(LAYOUT_VERSION) == "3"
    for fields in provider_hashes(redis_db).values():
        assert "gpus" not in fields and fields["gpu_specs"]
    for provider_id, answer in layout2["answers"].items():
        assert still(client.get(f"/providers/{provider_id}").get_json()) == still(answer)
    for query, ids in layout2["queries"].items():
        assert sorted(p["id"] for p in client.get(f"/providers?{query}").get_json()) == ids, query
        page = client.get(f"/providers?{query}&limit=2").get_json()
        assert [still(p) for p in page] == [still(layout2["answers"][p["id"]]) for p in page]


def test_the_daemons_live_values_and_a_gpus_health_survive_the_migration(
    layout2: dict[str, Any], registry: Registry, redis_db: redis.Redis
) -> None:
    migrate(registry.store)
    eight = redis_db.hgetall(f"registry:provider:{id_of('eight')}")
    # Layout 2 kept the daemon's last complete metrics apart; now they are the live pieces.
    assert eight["gpu_live"].split("\x1e")[7] == (
        '"utilization_gpu_percent":57,"utilization_memory_percent":28,"temperature_c":45,'
        '"power_draw_w":157,"is_healthy":true'
    )
    assert '"cuda_cores":16896' in eight["gpu_specs"] and "utilization" not in eight["gpu_specs"]
    sick = redis_db.hgetall(f"registry:provider:{id_of('sick')}")
    assert sick["gpu_live"].split("\x1e")[1].endswith('"is_healthy":false')
    assert sick["gpu_keys"].split()[1].endswith("!")


def test_migrated_providers_take_heartbeats_and_registrations(
    layout2: dict[str, Any], registry: Registry, app: Flask
) -> None:
    migrate(registry.store)
    mixed = id_of("mixed")
    daemon = bearer_client(app, layout2["tokens"][mixed])
    beat = daemon.post(f"/providers/{mixed}/heartbeat", json={"gpu_metrics": [{}, {"temperature_c": 50}]})
    assert beat.status_code == 200, beat.get_json()
    first, second = daemon.get(f"/providers/{mixed}").get_json()["gpus"]
    assert (first["temperature_c"], second["temperature_c"]) == (71, 50)  # 71: layout 2's fold
    body = {**still(layout2["answers"][mixed]), "gpus": [L4]}
    for name in ("id", "registered_at", "last_seen_at", "version"):
        del body[name]
    again = daemon.put(f"/providers/{mixed}", json=body)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["gpus"] == [{**L4, "is_healthy": True}]


def test_before_the_migration_the_old_hashes_are_read_and_written_safely(
    layout2: dict[str, Any], registry: Registry, app: Flask, client: Any, redis_db: redis.Redis
) -> None:
    # Instances of layout 3 serve before the leader has migrated: reads understand both
    # layouts, and a heartbeat's live values on an old hash are kept by the migration.
    eight, mixed = id_of("eight"), id_of("mixed")
    for provider_id, answer in layout2["answers"].items():
        assert still(client.get(f"/providers/{provider_id}").get_json()) == still(answer)
    complete = [{"utilization_gpu_percent": 90 + i, "utilization_memory_percent": 1, "temperature_c": 60,
                 "power_draw_w": 300, "is_healthy": True} for i in range(8)]
    for provider_id, metrics in ((eight, complete), (eight, complete), (mixed, [{"temperature_c": 33}])):
        daemon = bearer_client(app, layout2["tokens"][provider_id])
        beat = daemon.post(f"/providers/{provider_id}/heartbeat", json={"gpu_metrics": metrics})
        assert beat.status_code == 200, beat.get_json()
    before = {pid: client.get(f"/providers/{pid}").get_json()["gpus"] for pid in (eight, mixed)}
    assert [g["utilization_gpu_percent"] for g in before[eight]] == list(range(90, 98))
    assert before[mixed][0]["temperature_c"] == 33
    migrate(registry.store)
    assert {pid: client.get(f"/providers/{pid}").get_json()["gpus"] for pid in (eight, mixed)} == before


def test_migrating_again_changes_nothing(layout2: dict[str, Any], registry: Registry, redis_db: redis.Redis) -> None:
    migrate(registry.store)
    once = provider_hashes(redis_db)
    assert migrate(registry.store) == LAYOUT_VERSION
    redis_db.set("registry:layout", "2")  # a second instance that read the old version
    migrate(registry.store)
    assert provider_hashes(redis_db) == once


def test_a_snapshot_of_layout_2_restores_into_layout_3(registry: Registry, client: Any, redis_db: redis.Redis) -> None:
    # A snapshot keeps each provider's hash as it was: those of layout 2 come back rewritten.
    hashes = [(key.removeprefix("registry:provider:"), value["hash"])
              for key, value in FIXTURE["keys"].items() if key.startswith("registry:provider:")]
    assert registry.store.restore(hashes, registry.store.now_ms()) == len(FIXTURE["answers"])
    for fields in provider_hashes(redis_db).values():
        assert "gpus" not in fields and fields["gpu_specs"]
    for provider_id, answer in FIXTURE["answers"].items():
        assert client.get(f"/providers/{provider_id}").get_json()["gpus"] == answer["gpus"]
    assert sorted(p["id"] for p in client.get("/providers?gpu_model=l4&healthy_only=true").get_json()) == \
        FIXTURE["queries"]["healthy_only=true&gpu_model=l4"]


def test_the_leaders_sweeper_migrates_before_its_first_sweep(
    layout2: dict[str, Any], registry: Registry, redis_db: redis.Redis
) -> None:
    sweeper = Sweeper(registry.store, interval_s=0.05)
    thread = threading.Thread(target=sweeper.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while sweeper.sweeps == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sweeper.stop()
        thread.join(5)
    assert sweeper.sweeps > 0
    assert redis_db.get("registry:layout") == "3"
    assert all("gpus" not in fields for fields in provider_hashes(redis_db).values())
