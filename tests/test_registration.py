"""Registration, re-registration, details, reads and deregistration of providers."""
from __future__ import annotations

import uuid
from datetime import datetime

import pytest

from .conftest import redis_state, gpu, new_id, provider_body, provider_index_keys

# Every provider route is served at the root and again under /api/v1.
PREFIXES = pytest.mark.parametrize("prefix", ["", "/api/v1"], ids=["root", "api_v1"])


def parse_time(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@PREFIXES
def test_register_answers_201_with_location_rhythm_and_server_made_uuid(client, prefix):
    response = client.post(f"{prefix}/providers", json=provider_body())

    assert response.status_code == 201
    body = response.get_json()
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert response.headers["Location"] == f"{prefix}/providers/{body['id']}"
    assert body["heartbeat_interval_s"] == 10
    assert body["heartbeat_ttl_s"] == 30
    assert body["status"] == "idle"
    assert body["owner_id"] == "owner-1"
    assert body["name"] == "rig-1"
    assert body["hostname"] == "rig-1.example.net"
    assert body["ip_address"] == "10.0.0.5"
    assert body["location"] == "eu-west"
    assert body["metadata"] == {"rack": "r12"}
    assert body["gpus"] == [gpu(architecture="ampere", is_healthy=True)]


def test_register_makes_a_new_id_for_each_provider(providers):
    ids = {providers.register()["id"] for _ in range(3)}
    assert len(ids) == 3


def test_register_counts_as_the_first_heartbeat(providers):
    body = providers.register()
    registered = parse_time(body["registered_at"])
    assert parse_time(body["last_seen_at"]) == registered
    lease = (parse_time(body["lease_expires_at"]) - registered).total_seconds()
    assert lease == pytest.approx(30, abs=0.002)


def test_register_with_status_stores_that_status(providers):
    assert providers.register(status="maintenance")["status"] == "maintenance"


def test_register_with_optional_fields_absent_shows_them_null(client):
    body = {"owner_id": "o", "name": "n", "gpus": [gpu()]}
    response = client.post("/providers", json=body)
    assert response.status_code == 201
    shown = response.get_json()
    assert shown["hostname"] is None and shown["ip_address"] is None and shown["location"] is None
    assert shown["metadata"] == {}


def test_register_keeps_every_optional_gpu_field(providers):
    full = gpu(
        architecture="hopper", compute_capability="9.0", cuda_cores=16896, tensor_cores=528,
        memory_bandwidth_gb_s=3350, power_consumption_w=700, utilization_gpu_percent=12,
        utilization_memory_percent=40, temperature_c=61, power_draw_w=310, is_healthy=False,
    )
    body = providers.register(gpus=[full])
    assert body["gpus"] == [full]
    assert providers.get(body["id"])["gpus"] == [full]


@PREFIXES
def test_register_with_unknown_daemon_id_creates_it_with_that_id(client, prefix):
    kept = new_id()
    response = client.post(f"{prefix}/providers", json=provider_body(id=kept))
    assert response.status_code == 201
    assert response.get_json()["id"] == kept
    assert response.headers["Location"] == f"{prefix}/providers/{kept}"


def test_register_with_uppercase_daemon_id_stores_its_canonical_form(client, providers):
    kept = new_id()
    response = client.post("/providers", json=provider_body(id=kept.upper()))
    assert response.get_json()["id"] == kept
    assert providers.get(kept.upper())["id"] == kept


@PREFIXES
def test_reregister_with_kept_id_updates_in_place_and_answers_200(client, providers, prefix):
    first = providers.register(status="busy")
    response = client.post(
        f"{prefix}/providers",
        json=provider_body(id=first["id"], name="rig-1b", gpus=[gpu("H100", 81920)]),
    )

    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == first["id"]
    assert body["name"] == "rig-1b"
    assert body["gpus"][0]["model_name"] == "H100"
    assert body["registered_at"] == first["registered_at"]
    assert response.headers["Location"] == f"{prefix}/providers/{first['id']}"
    assert providers.ids() == [first["id"]]


def test_reregister_is_a_fresh_start_with_status_idle_when_absent(client, providers):
    first = providers.register(status="busy")
    body = client.post("/providers", json=provider_body(id=first["id"])).get_json()
    assert body["status"] == "idle"
    assert providers.ids("status=busy") == []
    assert providers.ids("status=idle") == [first["id"]]


def test_reregister_takes_the_status_of_its_body(client, providers):
    first = providers.register()
    body = client.post("/providers", json=provider_body(id=first["id"], status="error")).get_json()
    assert body["status"] == "error"
    assert providers.ids("status=error") == [first["id"]]
    assert providers.ids("status=idle") == []


def test_reregister_counts_as_a_heartbeat(client, providers, redis_db):
    first = providers.register()
    redis_db.pexpire(f"registry:lease:{first['id']}", 1000)
    body = client.post("/providers", json=provider_body(id=first["id"])).get_json()
    last_seen = parse_time(body["last_seen_at"])
    assert last_seen >= parse_time(first["last_seen_at"])
    assert (parse_time(body["lease_expires_at"]) - last_seen).total_seconds() == 30
    assert redis_db.pttl(f"registry:lease:{first['id']}") > 29_000


def test_reregister_leaves_no_duplicate_in_any_index(client, providers, redis_db):
    first = providers.register(gpus=[gpu("A100", 40960), gpu("A100", 40960)], location="eu-west")
    client.post(
        "/providers",
        json=provider_body(id=first["id"], gpus=[gpu("H100", 81920)], location="us-east"),
    )

    assert provider_index_keys(redis_db, first["id"]) == [
        "registry:gpu:h100:1:81920:idle",
        "registry:gpus:1:81920:idle",
        "registry:leases",
        "registry:location:us-east",
        "registry:providers",
        "registry:status:idle",
    ]
    assert providers.ids("gpu_model=A100") == []
    assert providers.ids("location=eu-west") == []
    assert providers.ids("gpu_model=H100&location=us-east") == [first["id"]]
    assert providers.ids() == [first["id"]]


@PREFIXES
def test_put_details_replaces_them_and_keeps_status_and_lease(client, providers, redis_db, prefix):
    first = providers.register(status="busy")
    ttl_before = redis_db.pttl(f"registry:lease:{first['id']}")
    details = {
        "owner_id": "owner-2",
        "name": "rig-renamed",
        "location": "us-east",
        "gpus": [gpu("H100", 81920), gpu("H100", 81920)],
    }
    response = client.put(f"{prefix}/providers/{first['id']}", json=details)

    assert response.status_code == 200
    body = response.get_json()
    assert body["owner_id"] == "owner-2"
    assert body["name"] == "rig-renamed"
    assert body["location"] == "us-east"
    # Replaced, not merged: fields the body leaves out are gone.
    assert body["hostname"] is None and body["ip_address"] is None
    assert body["metadata"] == {}
    assert [g["model_name"] for g in body["gpus"]] == ["H100", "H100"]
    assert body["status"] == "busy"
    assert body["last_seen_at"] == first["last_seen_at"]
    assert body["lease_expires_at"] == first["lease_expires_at"]
    assert body["registered_at"] == first["registered_at"]
    assert 0 < redis_db.pttl(f"registry:lease:{first['id']}") <= ttl_before
    assert providers.get(first["id"]) == body


def test_put_details_moves_the_provider_between_indexes(client, providers):
    first = providers.register(gpus=[gpu("A100", 40960)], location="eu-west")
    details = provider_body(gpus=[gpu("H100", 81920), gpu("H100", 81920)], location="us-east")
    client.put(f"/providers/{first['id']}", json=details)

    assert providers.ids("gpu_model=A100") == []
    assert providers.ids("gpu_model=H100&min_gpus=2") == [first["id"]]
    assert providers.ids("location=eu-west") == []
    assert providers.ids("location=us-east") == [first["id"]]


def test_put_details_of_an_offline_provider_keeps_it_offline(client, providers):
    first = providers.register()
    providers.heartbeat(first["id"], status="offline")
    body = client.put(f"/providers/{first['id']}", json=provider_body()).get_json()
    assert body["status"] == "offline"


@PREFIXES
def test_put_details_of_unknown_provider_is_404(client, redis_db, prefix):
    response = client.put(f"{prefix}/providers/{new_id()}", json=provider_body())
    assert response.status_code == 404
    assert response.get_json()["code"] == "provider_not_found"
    assert redis_state(redis_db) == {}  # no provider key written (rate-limit counters aside)


def test_put_accepts_the_object_get_returned_and_ignores_its_server_fields(client, providers):
    first = providers.register(status="busy")
    shown = providers.get(first["id"])
    edited = {**shown, "name": "renamed", "status": "idle", "version": 999, "registered_at": None}
    response = client.put(f"/providers/{first['id']}", json=edited)
    assert response.status_code == 200, response.get_json()
    after = response.get_json()
    assert after["name"] == "renamed"
    assert after["status"] == "busy" and after["registered_at"] == shown["registered_at"]
    assert after["version"] == shown["version"] + 1


def test_put_with_another_providers_id_is_refused(client, providers):
    first, other = providers.register(), providers.register()
    response = client.put(f"/providers/{first['id']}", json=provider_body(id=other["id"]))
    assert response.status_code == 400
    assert list(response.get_json()["details"]) == ["id"]
    assert providers.get(first["id"])["version"] == first["version"]


@PREFIXES
def test_get_returns_the_provider_with_effective_status_and_lease_deadline(client, providers, prefix):
    first = providers.register(status="busy")
    response = client.get(f"{prefix}/providers/{first['id']}")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "busy"
    assert body["lease_expires_at"] == first["lease_expires_at"]
    assert set(body) == {
        "id", "owner_id", "name", "hostname", "ip_address", "location", "status", "liveness",
        "gpus", "metadata", "registered_at", "last_seen_at", "lease_expires_at", "version", "claim",
    }


def test_get_shows_offline_once_the_lease_lapsed(providers, redis_db):
    first = providers.register(status="busy")
    # The deadline the read path trusts is in the hash; move it into the past.
    redis_db.hset(f"registry:provider:{first['id']}", "lease_expires_at", 1)
    assert providers.get(first["id"])["status"] == "offline"


@PREFIXES
def test_get_unknown_provider_is_404_json(client, prefix):
    response = client.get(f"{prefix}/providers/{new_id()}")
    assert response.status_code == 404
    assert response.get_json()["code"] == "provider_not_found"


@PREFIXES
def test_delete_answers_204_and_removes_every_key_and_index_entry(client, providers, redis_db, prefix):
    keep = providers.register(gpus=[gpu("A100", 40960)])
    gone = providers.register(
        gpus=[gpu("A100", 40960, architecture="ampere"), gpu("H100", 81920, is_healthy=False)],
        location="us-east",
        status="busy",
    )
    assert len(provider_index_keys(redis_db, gone["id"])) > 5

    response = client.delete(f"{prefix}/providers/{gone['id']}")

    assert response.status_code == 204
    assert response.get_data() == b""
    assert provider_index_keys(redis_db, gone["id"]) == []
    assert not redis_db.exists(f"registry:provider:{gone['id']}")
    assert not redis_db.exists(f"registry:lease:{gone['id']}")
    assert client.get(f"/providers/{gone['id']}").status_code == 404
    assert providers.ids() == [keep["id"]]
    assert providers.ids("status=busy") == []
    # Only the other provider's keys are left.
    assert all(gone["id"] not in key for key in redis_db.keys("*"))


@PREFIXES
def test_delete_unknown_provider_is_404(client, prefix):
    response = client.delete(f"{prefix}/providers/{new_id()}")
    assert response.status_code == 404
    assert response.get_json()["code"] == "provider_not_found"


@PREFIXES
def test_list_route_is_served_under_both_prefixes(client, providers, prefix):
    first = providers.register()
    response = client.get(f"{prefix}/providers")
    assert response.status_code == 200
    assert [p["id"] for p in response.get_json()] == [first["id"]]


@PREFIXES
@pytest.mark.parametrize(
    "method, suffix", [("put", "/status"), ("patch", "/status"), ("post", "/heartbeat")]
)
def test_heartbeat_routes_are_served_under_both_prefixes(client, providers, prefix, method, suffix):
    first = providers.register()
    response = getattr(client, method)(f"{prefix}/providers/{first['id']}{suffix}", json={"status": "busy"})
    assert response.status_code == 200
    assert response.get_json()["status"] == "busy"


def test_health_answers_ok_with_redis_reachable(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"
