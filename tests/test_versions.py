"""Conditional updates: every provider carries a version, shown as its ETag."""
from __future__ import annotations

import time

import pytest

from .conftest import Providers, gpu, provider_body


def version(client, provider_id: str) -> int:
    response = client.get(f"/providers/{provider_id}")
    assert response.headers["ETag"] == f'"{response.get_json()["version"]}"'
    return response.get_json()["version"]


def test_a_new_provider_is_version_1_and_get_returns_it_as_etag(client, providers):
    provider_id = providers.register()["id"]
    response = client.get(f"/providers/{provider_id}")
    assert response.get_json()["version"] == 1
    assert response.headers["ETag"] == '"1"'


def test_changes_of_details_status_or_claim_bump_the_version(client, providers):
    provider_id = providers.register()["id"]
    client.put(f"/providers/{provider_id}", json=provider_body(name="renamed"))
    assert version(client, provider_id) == 2
    providers.heartbeat(provider_id, status="busy")
    assert version(client, provider_id) == 3
    providers.heartbeat(provider_id, status="idle")
    claim_id = client.post("/providers/claim", json={}).get_json()["claim_id"]
    assert version(client, provider_id) == 5
    client.post(f"/providers/{provider_id}/release", json={"claim_id": claim_id})
    assert version(client, provider_id) == 6
    providers.register(id=provider_id)
    assert version(client, provider_id) == 7


def test_plain_heartbeats_metrics_and_lapses_bump_nothing(make_app):
    client = make_app(heartbeat_ttl_s=1, heartbeat_interval_s=0.5).test_client()
    providers = Providers(client)
    provider_id = providers.register()["id"]
    providers.heartbeat(provider_id)
    providers.heartbeat(provider_id, status="idle")
    providers.heartbeat(provider_id, gpu_metrics=[{"utilization_gpu_percent": 97, "temperature_c": 71}])
    assert version(client, provider_id) == 1

    time.sleep(1.05)
    assert providers.get(provider_id)["status"] == "offline"
    assert version(client, provider_id) == 1


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("put", "", provider_body(name="renamed", gpus=[gpu("RTX 4090", 24576)])),
        ("delete", "", None),
        ("put", "/status", {"status": "busy"}),
        ("patch", "/status", {"status": "busy"}),
        ("post", "/heartbeat", {"status": "busy"}),
    ],
)
def test_if_match_with_another_version_is_412_and_changes_nothing(client, providers, redis_db, method, path, body):
    provider_id = providers.register()["id"]
    before = redis_db.hgetall(f"registry:provider:{provider_id}")

    response = getattr(client, method)(f"/providers/{provider_id}{path}", json=body, headers={"If-Match": '"7"'})

    assert response.status_code == 412
    assert response.get_json()["code"] == "version_mismatch"
    assert response.headers["ETag"] == '"1"'
    assert redis_db.hgetall(f"registry:provider:{provider_id}") == before


@pytest.mark.parametrize("header", ['"1"', '"5", "1"', "*"])
def test_if_match_with_the_current_version_or_star_goes_through(client, providers, header):
    provider_id = providers.register()["id"]
    response = client.put(f"/providers/{provider_id}/status", json={"status": "busy"}, headers={"If-Match": header})
    assert response.status_code == 200
    assert response.headers["ETag"] == '"2"'


def test_weak_or_malformed_if_match_never_matches(client, providers):
    provider_id = providers.register()["id"]
    for header in ('W/"1"', "1", "garbage"):
        response = client.delete(f"/providers/{provider_id}", headers={"If-Match": header})
        assert response.status_code == 412
    assert client.get(f"/providers/{provider_id}").status_code == 200
