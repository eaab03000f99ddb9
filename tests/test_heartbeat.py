"""Heartbeats: lease renewal, status changes and live GPU metrics, on all three routes."""
from __future__ import annotations

from datetime import datetime

import pytest

from .conftest import redis_state, gpu, new_id

# PUT .../status is the heartbeat the original README names; the Go clients use the other two.
ROUTES = pytest.mark.parametrize(
    "method, suffix",
    [("put", "/status"), ("post", "/heartbeat"), ("patch", "/status")],
    ids=["put_status", "post_heartbeat", "patch_status"],
)


def beat(client, method: str, suffix: str, provider_id: str, **kwargs):
    return getattr(client, method)(f"/providers/{provider_id}{suffix}", **kwargs)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@ROUTES
def test_heartbeat_renews_the_lease_and_answers_the_lease_and_rhythm(
    client, providers, redis_db, method, suffix
):
    first = providers.register()
    redis_db.pexpire(f"registry:lease:{first['id']}", 2000)

    response = beat(client, method, suffix, first["id"], json={})

    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == first["id"]
    assert body["status"] == "idle"
    assert body["heartbeat_interval_s"] == 10 and body["heartbeat_ttl_s"] == 30
    last_seen = parse_time(body["last_seen_at"])
    assert last_seen >= parse_time(first["last_seen_at"])
    assert (parse_time(body["lease_expires_at"]) - last_seen).total_seconds() == 30
    assert redis_db.pttl(f"registry:lease:{first['id']}") > 29_000
    assert redis_db.zscore("registry:leases", first["id"]) == int(last_seen.timestamp() * 1000) + 30_000


@ROUTES
@pytest.mark.parametrize(
    "content_type", [None, "application/json", "text/plain", "application/x-www-form-urlencoded"]
)
def test_heartbeat_accepts_an_empty_body_whatever_its_content_type(
    client, providers, method, suffix, content_type
):
    first = providers.register(status="busy")
    kwargs = {"data": b""}
    if content_type:
        kwargs["content_type"] = content_type
    response = beat(client, method, suffix, first["id"], **kwargs)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "busy"


@ROUTES
@pytest.mark.parametrize("status", ["idle", "busy", "maintenance", "error"])
def test_heartbeat_sets_the_status_it_carries(client, providers, method, suffix, status):
    first = providers.register(status="idle" if status != "idle" else "busy")
    response = beat(client, method, suffix, first["id"], json={"status": status})
    assert response.get_json()["status"] == status
    assert providers.get(first["id"])["status"] == status
    assert providers.ids(f"status={status}") == [first["id"]]


def test_heartbeat_moves_the_provider_between_status_sets(providers, redis_db):
    first = providers.register()
    providers.heartbeat(first["id"], status="busy")
    assert redis_db.zscore("registry:status:busy", first["id"]) == 0
    assert redis_db.zscore("registry:status:idle", first["id"]) is None


def test_heartbeat_without_status_keeps_the_current_one(providers):
    first = providers.register(status="maintenance")
    assert providers.heartbeat(first["id"])["status"] == "maintenance"
    assert providers.heartbeat(first["id"], status=None)["status"] == "maintenance"


@ROUTES
def test_heartbeat_offline_ends_the_lease_at_once(client, providers, redis_db, method, suffix):
    first = providers.register(status="busy")

    body = beat(client, method, suffix, first["id"], json={"status": "offline"}).get_json()

    assert body["status"] == "offline"
    assert body["lease_expires_at"] == body["last_seen_at"]
    assert not redis_db.exists(f"registry:lease:{first['id']}")
    assert redis_db.zscore("registry:leases", first["id"]) is None
    assert providers.get(first["id"])["status"] == "offline"
    assert providers.ids("status=offline") == [first["id"]]
    assert providers.ids("status=busy") == []


def test_heartbeat_without_status_brings_an_offline_provider_back_idle(providers):
    first = providers.register(status="busy")
    providers.heartbeat(first["id"], status="offline")

    body = providers.heartbeat(first["id"])

    assert body["status"] == "idle"
    assert parse_time(body["lease_expires_at"]) > parse_time(body["last_seen_at"])
    assert providers.ids("status=idle") == [first["id"]]
    assert providers.ids("status=offline") == []


def test_heartbeat_with_status_brings_an_offline_provider_back_in_that_status(providers):
    first = providers.register()
    providers.heartbeat(first["id"], status="offline")
    assert providers.heartbeat(first["id"], status="maintenance")["status"] == "maintenance"


def test_heartbeat_merges_live_gpu_metrics_by_position(providers):
    first = providers.register(
        gpus=[gpu("A100", 40960, temperature_c=40), gpu("H100", 81920, power_draw_w=100)]
    )
    metrics = [
        {"utilization_gpu_percent": 90, "utilization_memory_percent": 55},
        {"temperature_c": 71, "power_draw_w": 350, "is_healthy": False},
    ]

    providers.heartbeat(first["id"], gpu_metrics=metrics)

    assert providers.get(first["id"])["gpus"] == [
        gpu("A100", 40960, temperature_c=40, is_healthy=True,
            utilization_gpu_percent=90, utilization_memory_percent=55),
        gpu("H100", 81920, temperature_c=71, power_draw_w=350, is_healthy=False),
    ]


def test_heartbeat_metrics_do_not_change_the_gpus_identity(providers):
    first = providers.register(gpus=[gpu("A100", 40960, architecture="ampere", cuda_cores=6912)])
    metrics = [gpu("H100", 81920, architecture="hopper", cuda_cores=1, temperature_c=50)]

    providers.heartbeat(first["id"], gpu_metrics=metrics)

    assert providers.get(first["id"])["gpus"] == [
        gpu("A100", 40960, architecture="ampere", cuda_cores=6912, is_healthy=True, temperature_c=50)
    ]
    assert providers.ids("gpu_model=A100&min_vram=40960") == [first["id"]]
    assert providers.ids("gpu_model=H100") == []


def test_heartbeat_metrics_without_is_healthy_leave_it_as_it_was(providers):
    first = providers.register(gpus=[gpu(is_healthy=False)])
    providers.heartbeat(first["id"], gpu_metrics=[{"temperature_c": 30}])
    assert providers.get(first["id"])["gpus"][0]["is_healthy"] is False


def test_heartbeat_metrics_beyond_the_gpus_are_ignored(providers):
    first = providers.register(gpus=[gpu()])
    providers.heartbeat(first["id"], gpu_metrics=[{"temperature_c": 30}, {"temperature_c": 99}])
    gpus = providers.get(first["id"])["gpus"]
    assert len(gpus) == 1 and gpus[0]["temperature_c"] == 30.0


def test_heartbeat_marking_a_gpu_unhealthy_changes_healthy_only_queries(providers):
    first = providers.register(gpus=[gpu("A100", 40960)])
    assert providers.ids("healthy_only=true") == [first["id"]]

    providers.heartbeat(first["id"], gpu_metrics=[{"is_healthy": False}])
    assert providers.ids("healthy_only=true") == []
    assert providers.ids("gpu_model=A100&healthy_only=true") == []
    assert providers.ids("gpu_model=A100") == [first["id"]]

    providers.heartbeat(first["id"], gpu_metrics=[{"is_healthy": True}])
    assert providers.ids("healthy_only=true") == [first["id"]]


@ROUTES
def test_heartbeat_of_unknown_provider_is_404_provider_not_found(client, redis_db, method, suffix):
    unknown = new_id()
    response = beat(client, method, suffix, unknown, json={"status": "busy"})
    assert response.status_code == 404
    body = response.get_json()
    assert body["code"] == "provider_not_found"
    assert unknown in body["error"]
    assert redis_state(redis_db) == {}  # no provider key written (rate-limit counters aside)


def test_heartbeat_on_the_go_daemon_route_under_api_v1(client, providers):
    first = providers.register()
    response = client.post(f"/api/v1/providers/{first['id']}/heartbeat", json={"status": "busy"})
    assert response.status_code == 200
    assert response.get_json()["status"] == "busy"
    assert client.post(f"/api/v1/providers/{new_id()}/heartbeat").status_code == 404
