"""Claims: a scheduler takes providers atomically; renew, confirm, release; lapses."""
from __future__ import annotations

import time
import uuid

import pytest

from app.jobs.sweeper import Sweeper
from app.registry import EXTENSION

from .conftest import Providers, gpu, new_id


def claim(client, **body):
    return client.post("/providers/claim", json=body)


def event_types(client, provider_id: str) -> list[str]:
    events = client.get("/providers/events?after=0").get_json()["events"]
    return [e["type"] for e in events if e["provider_id"] == provider_id]


def test_claim_marks_providers_busy_under_one_claim_id(client, providers):
    ids = [providers.register(name=f"rig-{i}")["id"] for i in range(3)]

    response = claim(client, count=2, claimant="scheduler-a")

    assert response.status_code == 200
    body = response.get_json()
    uuid.UUID(body["claim_id"])
    assert body["expires_at"].endswith("Z")
    granted = [p["id"] for p in body["providers"]]
    assert len(granted) == 2 and set(granted) <= set(ids)
    for provider_id in granted:
        shown = providers.get(provider_id)
        assert shown["status"] == "busy"
        assert shown["claim"] == {"claimant": "scheduler-a", "confirmed": False, "expires_at": body["expires_at"]}
    assert [p["id"] for p in client.get("/providers?status=idle").get_json()] == sorted(set(ids) - set(granted))


def test_only_live_idle_unclaimed_providers_are_candidates(client, providers):
    idle = providers.register(name="idle")["id"]
    providers.register(name="busy", status="busy")
    providers.register(name="maintenance", status="maintenance")
    gone = providers.register(name="gone")["id"]
    providers.heartbeat(gone, status="offline")

    first = claim(client, count=1).get_json()
    assert [p["id"] for p in first["providers"]] == [idle]
    second = claim(client, count=1)
    assert second.status_code == 409


def test_not_enough_free_providers_is_409_and_claims_nothing(client, providers):
    providers.register(name="a")
    providers.register(name="b")
    providers.register(name="c", status="busy")
    providers.register(name="other-model", gpus=[gpu("RTX 4090", 24576)])

    response = claim(client, count=3, gpu_model="nvidia a100")

    assert response.status_code == 409
    body = response.get_json()
    assert body["code"] == "no_capacity"
    assert body["details"] == {"requested": 3, "matched": 3, "free": 2}
    assert len(client.get("/providers?status=idle").get_json()) == 3


def test_claim_applies_the_list_filters(client, providers):
    providers.register(name="small", gpus=[gpu("NVIDIA A100", 40960)], location="us-east")
    big = providers.register(name="big", gpus=[gpu("NVIDIA A100", 81920)] * 2, location="eu-west")["id"]

    body = claim(
        client, gpu_model="NVIDIA a100", min_vram=80000, min_gpus=2, location="EU-West", healthy_only=True
    ).get_json()

    assert [p["id"] for p in body["providers"]] == [big]


def test_sort_vram_takes_the_smallest_sufficient_gpu_first(client, providers):
    sizes = {providers.register(name=f"v{v}", gpus=[gpu("NVIDIA A100", v)])["id"]: v for v in (81920, 40960, 24576)}

    first = claim(client, min_vram=30000, sort="vram").get_json()["providers"][0]["id"]
    largest = claim(client, sort="-vram").get_json()["providers"][0]["id"]

    assert sizes[first] == 40960
    assert sizes[largest] == 81920


def test_renew_confirm_release(client, providers):
    provider_id = providers.register()["id"]
    granted = claim(client, claim_ttl_s=30).get_json()
    claim_id = granted["claim_id"]

    time.sleep(0.01)
    renewed = client.post(f"/providers/{provider_id}/claim/renew", json={"claim_id": claim_id})
    assert renewed.status_code == 200
    assert renewed.get_json()["claim"]["expires_at"] > granted["expires_at"]

    confirmed = client.post(f"/providers/{provider_id}/claim/confirm", json={"claim_id": claim_id})
    assert confirmed.status_code == 200
    assert confirmed.get_json()["claim"] == {"claimant": "", "confirmed": True, "expires_at": None}

    released = client.post(f"/providers/{provider_id}/release", json={"claim_id": claim_id})
    assert released.status_code == 200
    assert released.get_json()["status"] == "idle"
    assert released.get_json()["claim"] is None
    assert event_types(client, provider_id)[-3:] == ["claimed", "claim_confirmed", "claim_released"]


@pytest.mark.parametrize("route", ["claim/renew", "claim/confirm", "release"])
def test_claim_routes_refuse_another_claim_id_unknown_providers_and_bad_ids(client, providers, route):
    provider_id = providers.register()["id"]
    claim(client)

    mismatch = client.post(f"/providers/{provider_id}/{route}", json={"claim_id": new_id()})
    assert mismatch.status_code == 409
    assert mismatch.get_json()["code"] == "claim_mismatch"
    assert providers.get(provider_id)["status"] == "busy"

    unknown = client.post(f"/providers/{new_id()}/{route}", json={"claim_id": new_id()})
    assert unknown.status_code == 404
    assert unknown.get_json()["code"] == "provider_not_found"

    malformed = client.post(f"/providers/{provider_id}/{route}", json={"claim_id": "nope"})
    assert malformed.status_code == 400


def test_unconfirmed_claim_lapses_at_its_deadline_and_the_feed_says_so(client, providers, registry):
    provider_id = providers.register()["id"]
    claim_id = claim(client, claim_ttl_s=1).get_json()["claim_id"]
    assert providers.get(provider_id)["status"] == "busy"

    time.sleep(1.05)
    # Read time, before any sweep: idle again, and claimable again.
    assert providers.get(provider_id)["status"] == "idle"
    assert providers.get(provider_id)["claim"] is None
    assert [p["id"] for p in client.get("/providers?status=idle").get_json()] == [provider_id]
    assert client.get("/providers/summary").get_json()["by_status"]["idle"] == 1
    confirm = client.post(f"/providers/{provider_id}/claim/confirm", json={"claim_id": claim_id})
    assert confirm.status_code == 409

    again = claim(client)
    assert again.status_code == 200
    assert event_types(client, provider_id)[-2:] == ["claim_expired", "claimed"]


def test_sweeper_writes_claim_expired(client, providers, registry):
    provider_id = providers.register()["id"]
    claim(client, claim_ttl_s=1)
    time.sleep(1.05)

    transitions = Sweeper(registry.store, interval_s=0.1).sweep_once()

    assert [(t.provider_id, t.previous_status, t.status) for t in transitions] == [(provider_id, "busy", "idle")]
    assert event_types(client, provider_id)[-1] == "claim_expired"


def test_confirmed_claim_outlives_its_ttl(client, providers):
    provider_id = providers.register()["id"]
    claim_id = claim(client, claim_ttl_s=1).get_json()["claim_id"]
    client.post(f"/providers/{provider_id}/claim/confirm", json={"claim_id": claim_id})

    time.sleep(1.05)

    assert providers.get(provider_id)["status"] == "busy"
    assert claim(client).status_code == 409


def test_idle_heartbeat_never_ends_a_claim(client, providers):
    provider_id = providers.register()["id"]
    claim_id = claim(client).get_json()["claim_id"]

    after = providers.heartbeat(provider_id, status="idle")

    assert after["status"] == "busy"
    assert client.post(f"/providers/{provider_id}/claim/confirm", json={"claim_id": claim_id}).status_code == 200


@pytest.mark.parametrize("status", ["maintenance", "error", "offline"])
def test_heartbeat_with_maintenance_error_or_offline_ends_the_claim(client, providers, status):
    provider_id = providers.register()["id"]
    claim_id = claim(client).get_json()["claim_id"]

    providers.heartbeat(provider_id, status=status)

    assert client.post(f"/providers/{provider_id}/release", json={"claim_id": claim_id}).status_code == 409
    released = [e for e in client.get("/providers/events?after=0").get_json()["events"] if e["type"] == "claim_released"]
    assert [(e["claim_id"], e["reason"]) for e in released] == [(claim_id, status)]


def test_reregistration_ends_the_claim(client, providers):
    provider_id = providers.register()["id"]
    claim_id = claim(client).get_json()["claim_id"]

    again = providers.register(id=provider_id)

    assert again["status"] == "idle"
    assert client.post(f"/providers/{provider_id}/release", json={"claim_id": claim_id}).status_code == 409
    assert "claim_released" in event_types(client, provider_id)


def test_lapsed_lease_ends_the_claim(make_app):
    app = make_app(heartbeat_ttl_s=1, heartbeat_interval_s=0.5)
    client = app.test_client()
    providers = Providers(client)
    provider_id = providers.register()["id"]
    claim_id = claim(client, claim_ttl_s=600).get_json()["claim_id"]
    client.post(f"/providers/{provider_id}/claim/confirm", json={"claim_id": claim_id})

    time.sleep(1.05)
    assert providers.get(provider_id)["status"] == "offline"
    Sweeper(app.extensions[EXTENSION].store, interval_s=0.1).sweep_once()

    assert providers.heartbeat(provider_id)["status"] == "idle"
    assert providers.get(provider_id)["claim"] is None
    assert event_types(client, provider_id)[-3:] == ["claim_released", "offline", "online"]


def test_deregistration_ends_the_claim(client, providers):
    provider_id = providers.register()["id"]
    claim(client)

    client.delete(f"/providers/{provider_id}")

    assert event_types(client, provider_id)[-2:] == ["claim_released", "deregistered"]


@pytest.mark.parametrize(
    "body",
    [{"count": 0}, {"count": 65}, {"claim_ttl_s": 0}, {"claim_ttl_s": 3601}, {"sort": "price"}, {"count": "2"}, {"color": "red"}],
)
def test_bad_claim_bodies_are_400(client, providers, body):
    providers.register()
    response = claim(client, **body)
    assert response.status_code == 400
    assert response.get_json()["code"] == "validation_error"
    assert client.get("/providers?status=idle").headers["X-Total-Count"] == "1"
