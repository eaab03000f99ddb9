"""The daemon's heartbeat with live GPU metrics: as cheap as a plain renewal when it can be.

The platform's Go daemon sends every GPU's live values with each heartbeat. The hash keeps
them apart from the GPUs' specs, in `gpu_live` (one JSON fragment per GPU, joined to the
specs on every read). When they give every live field of every GPU and change no GPU's
health, the heartbeat FUNCTION stores them as they came; anything else (partial metrics, a
GPU turning unhealthy, a count that does not match) merges them into the stored ones in Lua
and updates the health marks and indexes. The specs never change with a heartbeat.
"""
from __future__ import annotations

from typing import Any, Iterator

import pytest
import redis
from flask import Flask

from app.config import Settings

from .conftest import gpu, register_daemon
from .test_heartbeat_hot_path import PLAIN_RENEWAL, command_calls, production_app


@pytest.fixture
def limited(settings: Settings, redis_db: redis.Redis) -> Iterator[Flask]:
    yield from production_app(settings, rate_limit_heartbeat="1000/minute", rate_limit_per_client="1000/minute")


TWO_GPUS = [gpu(architecture="ampere", utilization_gpu_percent=0), gpu(architecture="ampere")]


def metrics(*loads: int, healthy: tuple[bool, ...] = (True, True)) -> list[dict[str, Any]]:
    """Complete live values of each GPU, as the daemon sends them."""
    return [
        {"utilization_gpu_percent": load, "utilization_memory_percent": load // 2,
         "temperature_c": 40 + load // 10, "power_draw_w": 100 + load, "is_healthy": ok}
        for load, ok in zip(loads, healthy)
    ]


def beat(app_daemon: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = app_daemon.client.post(f"/api/v1/providers/{app_daemon.id}/heartbeat", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def gpus_of(daemon: Any) -> list[dict[str, Any]]:
    return daemon.client.get(f"/providers/{daemon.id}").get_json()["gpus"]


def test_complete_metrics_with_unchanged_health_are_a_plain_renewal(limited: Flask, redis_db: redis.Redis) -> None:
    daemon = register_daemon(limited, gpus=TWO_GPUS)
    beat(daemon, {"gpu_metrics": metrics(10, 20)})  # loads the FUNCTION library once
    redis_db.config_resetstat()
    beat(daemon, {"gpu_metrics": metrics(70, 80), "status": "online", "provider_id": daemon.id})
    assert command_calls(redis_db) == PLAIN_RENEWAL
    stored = redis_db.hget(f"registry:provider:{daemon.id}", "gpu_live")
    assert stored is not None and '"utilization_gpu_percent":70' in stored


def test_every_read_shows_the_latest_live_values_over_the_registered_gpus(limited: Flask, client: Any) -> None:
    daemon = register_daemon(limited, gpus=TWO_GPUS)
    beat(daemon, {"gpu_metrics": metrics(10, 20)})
    beat(daemon, {"gpu_metrics": metrics(55, 65)})
    first, second = gpus_of(daemon)
    assert (first["utilization_gpu_percent"], second["utilization_gpu_percent"]) == (55, 65)
    assert (first["power_draw_w"], second["temperature_c"]) == (155, 46)
    # What was registered and is not live stays as it was.
    assert first["model_name"] == "NVIDIA A100" and first["vram_mb"] == 81920
    # A page of a query reads the same hash the same way.
    [row] = client.get("/providers?limit=10").get_json()
    assert row["gpus"] == [first, second]


def test_partial_metrics_after_complete_ones_keep_the_fields_they_do_not_send(
    limited: Flask, redis_db: redis.Redis
) -> None:
    daemon = register_daemon(limited, gpus=TWO_GPUS)
    beat(daemon, {"gpu_metrics": metrics(30, 40)})
    beat(daemon, {"gpu_metrics": [{"temperature_c": 77}]})
    first, second = gpus_of(daemon)
    assert (first["temperature_c"], first["utilization_gpu_percent"]) == (77, 30)
    assert second["utilization_gpu_percent"] == 40
    # Merged into the live values by position, in their fixed order; the specs untouched.
    key = f"registry:provider:{daemon.id}"
    assert redis_db.hget(key, "gpu_live").split("\x1e") == [
        '"utilization_gpu_percent":30,"utilization_memory_percent":15,"temperature_c":77,'
        '"power_draw_w":130,"is_healthy":true',
        '"utilization_gpu_percent":40,"utilization_memory_percent":20,"temperature_c":44,'
        '"power_draw_w":140,"is_healthy":true',
    ]
    assert "utilization" not in redis_db.hget(key, "gpu_specs")


def test_a_gpu_turning_unhealthy_still_updates_its_mark_and_the_queries(
    limited: Flask, redis_db: redis.Redis, client: Any
) -> None:
    daemon = register_daemon(limited, gpus=TWO_GPUS)
    beat(daemon, {"gpu_metrics": metrics(10, 20)})
    beat(daemon, {"gpu_metrics": metrics(10, 20, healthy=(True, False))})
    keys = redis_db.hget(f"registry:provider:{daemon.id}", "gpu_keys")
    assert keys.split()[1].endswith("!") and not keys.split()[0].endswith("!")
    assert redis_db.sismember("registry:irregular", daemon.id)
    assert [g["is_healthy"] for g in gpus_of(daemon)] == [True, False]
    # And back: the next complete metrics with the new health are plain again.
    redis_db.config_resetstat()
    beat(daemon, {"gpu_metrics": metrics(11, 21, healthy=(True, False))})
    assert command_calls(redis_db) == PLAIN_RENEWAL
    beat(daemon, {"gpu_metrics": metrics(12, 22)})
    assert not redis_db.sismember("registry:irregular", daemon.id)
    assert [g["is_healthy"] for g in gpus_of(daemon)] == [True, True]


def test_metrics_for_more_or_fewer_gpus_than_registered_go_the_full_way(limited: Flask, redis_db: redis.Redis) -> None:
    daemon = register_daemon(limited, gpus=TWO_GPUS)
    beat(daemon, {"gpu_metrics": metrics(10, 20)})
    beat(daemon, {"gpu_metrics": metrics(90)})  # one entry: the second GPU keeps its values
    first, second = gpus_of(daemon)
    assert (first["utilization_gpu_percent"], second["utilization_gpu_percent"]) == (90, 20)
    beat(daemon, {"gpu_metrics": metrics(1, 2, 3, healthy=(True, True, True))})  # the third is ignored
    assert len(gpus_of(daemon)) == 2


def test_registering_again_starts_from_the_new_gpus_without_the_old_live_values(
    limited: Flask, redis_db: redis.Redis
) -> None:
    daemon = register_daemon(limited, gpus=TWO_GPUS)
    beat(daemon, {"gpu_metrics": metrics(50, 60)})
    body = {"owner_id": "owner-1", "name": "rig-1", "gpus": [gpu(architecture="ampere", temperature_c=33)]}
    response = daemon.client.put(f"/providers/{daemon.id}", json=body)
    assert response.status_code == 200, response.get_json()
    assert redis_db.hget(f"registry:provider:{daemon.id}", "gpu_live") == '"temperature_c":33,"is_healthy":true'
    [only] = gpus_of(daemon)
    assert only["temperature_c"] == 33 and "utilization_gpu_percent" not in only


def test_live_values_survive_a_snapshot_of_the_hash_and_its_restore(limited: Flask, redis_db: redis.Redis) -> None:
    from app.registry import EXTENSION

    daemon = register_daemon(limited, gpus=TWO_GPUS)
    beat(daemon, {"gpu_metrics": metrics(44, 45)})
    store = limited.extensions[EXTENSION].store
    hashes = [(daemon.id, redis_db.hgetall(f"registry:provider:{daemon.id}"))]
    store.wipe()
    assert store.restore(hashes, store.now_ms()) == 1
    provider, _ = store.get(daemon.id)
    assert [g["utilization_gpu_percent"] for g in provider.gpus] == [44, 45]


def test_a_snapshot_holds_the_gpus_with_their_latest_live_values(
    limited: Flask, database_url: str
) -> None:
    from app.registry import EXTENSION
    from app.snapshot import take_snapshot

    from .conftest import sql

    daemon = register_daemon(limited, gpus=TWO_GPUS)
    beat(daemon, {"gpu_metrics": metrics(61, 62)})
    take_snapshot(limited.extensions[EXTENSION].store, database_url)
    [(gpus,)] = sql(database_url, "SELECT gpus FROM providers WHERE id = %s", (daemon.id,))
    assert [g["utilization_gpu_percent"] for g in gpus] == [61, 62]
    assert [g["model_name"] for g in gpus] == ["NVIDIA A100", "NVIDIA A100"]
