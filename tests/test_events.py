"""The change feed: every transition in a capped Redis Stream, read with long polls."""
from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest

from app.jobs.sweeper import Sweeper
from app.registry import EXTENSION

from .conftest import Providers, provider_body


def feed(client, query: str) -> dict:
    response = client.get(f"/providers/events?{query}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def ms(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.fixture
def short_lease(make_app):
    app = make_app(heartbeat_ttl_s=1, heartbeat_interval_s=0.5)
    return app, app.test_client(), Providers(app.test_client())


def test_without_after_only_the_current_position(client, providers):
    assert feed(client, "") == {"events": [], "next": "0-0"}
    providers.register()
    position = feed(client, "")
    assert position["events"] == []
    assert feed(client, f"after={position['next']}")["events"] == []


def test_every_transition_is_in_the_feed_in_order(client, providers):
    provider_id = providers.register()["id"]
    client.put(f"/providers/{provider_id}", json=provider_body(name="renamed", location="us-east"))
    providers.heartbeat(provider_id, status="maintenance")
    providers.heartbeat(provider_id, status="idle")
    claim_id = client.post("/providers/claim", json={"claimant": "s"}).get_json()["claim_id"]
    client.post(f"/providers/{provider_id}/claim/confirm", json={"claim_id": claim_id})
    client.post(f"/providers/{provider_id}/release", json={"claim_id": claim_id})
    client.delete(f"/providers/{provider_id}")

    events = feed(client, "after=0")["events"]

    assert [e["type"] for e in events] == [
        "registered", "updated", "status_changed", "status_changed",
        "claimed", "claim_confirmed", "claim_released", "deregistered",
    ]
    assert all(e["provider_id"] == provider_id and e["at"].endswith("Z") for e in events)
    assert events[1]["changed"] == ["name", "location"]
    assert (events[2]["from"], events[2]["to"]) == ("idle", "maintenance")
    assert events[4]["claimant"] == "s" and events[4]["claim_id"] == claim_id
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


def test_next_resumes_after_the_last_event(client, providers):
    providers.register()
    first = feed(client, "after=0")
    providers.register()
    second = feed(client, f"after={first['next']}")
    assert [e["type"] for e in second["events"]] == ["registered"]
    assert second["next"] == second["events"][-1]["id"]


def test_sweeper_writes_offline_within_a_second_of_the_deadline(short_lease):
    app, client, providers = short_lease
    provider = providers.register()
    deadline = ms(provider["lease_expires_at"])
    start = feed(client, "")["next"]
    sweeper = Sweeper(app.extensions[EXTENSION].store, interval_s=0.1)
    thread = threading.Thread(target=sweeper.run, daemon=True)
    thread.start()
    try:
        got = feed(client, f"after={start}&wait=5")
    finally:
        sweeper.stop()
        thread.join(timeout=5)

    assert [e["type"] for e in got["events"]] == ["offline"]
    offline = got["events"][0]
    assert offline["at"] == provider["lease_expires_at"]
    assert int(offline["id"].split("-")[0]) - deadline < 1000


def test_a_heartbeat_after_an_unswept_lapse_writes_offline_then_online(short_lease):
    _, client, providers = short_lease
    provider_id = providers.register()["id"]
    time.sleep(1.05)

    providers.heartbeat(provider_id)

    events = feed(client, "after=0")["events"]
    assert [e["type"] for e in events] == ["registered", "offline", "online"]
    assert events[2]["status"] == "idle"


def test_long_poll_returns_when_an_event_comes(client, providers):
    start = feed(client, "")["next"]
    timer = threading.Timer(0.3, providers.register)
    timer.start()
    began = time.monotonic()
    got = feed(client, f"after={start}&wait=10")
    timer.join()
    assert [e["type"] for e in got["events"]] == ["registered"]
    assert time.monotonic() - began < 5


def test_long_poll_with_nothing_new_returns_empty_after_the_wait(client, providers):
    providers.register()
    start = feed(client, "")["next"]
    began = time.monotonic()
    got = feed(client, f"after={start}&wait=0.3")
    assert got["events"] == [] and got["next"] == start
    assert time.monotonic() - began >= 0.25


def test_after_0_says_truncated_when_old_events_were_trimmed(make_app):
    client = make_app(events_max_len=10).test_client()
    providers = Providers(client)
    provider_id = providers.register()["id"]
    for i in range(300):
        providers.heartbeat(provider_id, status="busy" if i % 2 == 0 else "idle")

    got = feed(client, "after=0")

    assert got["truncated"] is True
    assert got["events"][0]["type"] != "registered"


@pytest.mark.parametrize("query", ["after=abc", "after=1-2-3", "after=0&wait=31", "after=0&wait=-1", "colour=red"])
def test_bad_feed_parameters_are_400(client, query):
    response = client.get(f"/providers/events?{query}")
    assert response.status_code == 400
    assert response.get_json()["code"] == "validation_error"


def test_the_stream_key_is_readable_with_xread(client, providers, redis_db):
    provider_id = providers.register()["id"]
    entries = redis_db.xread({"registry:events": "0"})
    (key, items), = entries
    assert key == "registry:events"
    assert items[0][1]["type"] == "registered" and items[0][1]["provider_id"] == provider_id
