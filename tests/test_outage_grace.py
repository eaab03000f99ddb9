"""Outage grace: when the registry as a whole could not hear daemons, their leases do not lapse.

A lease that ran out while no serving process reached Redis runs one more lease from the moment
the registry hears again; a daemon that really died goes offline one lease after that. A registry
that kept its pulse (one instance up, say) gives no grace: silence then means a dead daemon.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Iterator

import pytest
import requests

from app.jobs.sweeper import Sweeper
from app.registry import EXTENSION

from .conftest import gpu, provider_body
from .gunicorn_server import GunicornServer

LEASE_S, BLIND_AFTER_S = 1.0, 0.4


@pytest.fixture
def graced(make_app):
    """An app with a short lease, whose store reports outages after 0.4 s without a pulse."""
    app = make_app(heartbeat_ttl_s=LEASE_S, outage_grace_after_s=BLIND_AFTER_S)
    return app, app.extensions[EXTENSION].store


@pytest.fixture
def pulsing(graced) -> Iterator[threading.Event]:
    """Pulse as a serving process does, until the test sets the returned event."""
    _, store = graced
    stop = threading.Event()

    def pulse() -> None:
        while not stop.wait(BLIND_AFTER_S / 4):
            store.pulse()

    store.pulse()
    thread = threading.Thread(target=pulse, daemon=True)
    thread.start()
    yield stop
    stop.set()
    thread.join()


def events(client, kind: str) -> list[dict]:
    return [e for e in client.get("/providers/events?after=0").get_json()["events"] if e["type"] == kind]


def test_leases_that_lapsed_while_the_registry_was_blind_run_one_more_lease(graced):
    app, store = graced
    client = app.test_client()
    body = client.post("/providers", json=provider_body()).get_json()
    store.pulse()
    time.sleep(LEASE_S + 0.3)  # nobody pulses: every instance is down
    shown = client.get(f"/providers/{body['id']}").get_json()
    assert (shown["status"], shown["liveness"]) == ("idle", "grace")
    assert Sweeper(store, interval_s=1).sweep_once() == []
    outage = events(client, "outage")
    assert len(outage) == 1 and outage[0]["leases"] == 1 and outage[0]["provider_id"] == ""
    assert client.get("/providers/summary").get_json()["in_grace"] == 1
    assert events(client, "offline") == []


def test_a_daemon_heard_during_grace_is_live_again(graced):
    app, store = graced
    client = app.test_client()
    body = client.post("/providers", json=provider_body()).get_json()
    store.pulse()
    time.sleep(LEASE_S + 0.3)
    assert client.put(f"/providers/{body['id']}/status").status_code == 200
    assert client.get(f"/providers/{body['id']}").get_json()["liveness"] == "live"
    assert client.get("/providers/summary").get_json()["in_grace"] == 0


def test_a_daemon_that_died_in_the_outage_goes_offline_one_lease_after_the_return(graced, pulsing):
    app, store = graced
    client = app.test_client()
    body = client.post("/providers", json=provider_body()).get_json()
    pulsing.set()  # the registry goes blind
    time.sleep(LEASE_S + 0.3)
    back = time.monotonic()
    store.pulse()  # and hears again: the grace starts here
    assert client.get(f"/providers/{body['id']}").get_json()["liveness"] == "grace"
    sweeper = Sweeper(store, interval_s=1)
    while not sweeper.sweep_once():
        assert time.monotonic() - back < LEASE_S + 0.5, "still not offline"
        store.pulse()
        time.sleep(0.05)
    assert time.monotonic() - back >= LEASE_S - 0.1
    shown = client.get(f"/providers/{body['id']}").get_json()
    assert (shown["status"], shown["liveness"]) == ("offline", "offline")
    assert len(events(client, "offline")) == 1


def test_a_registry_that_kept_its_pulse_lets_silent_leases_lapse(graced, pulsing):
    app, store = graced
    client = app.test_client()
    body = client.post("/providers", json=provider_body()).get_json()
    time.sleep(LEASE_S + 0.3)  # the pulse goes on: one instance was up, the daemon is silent
    shown = client.get(f"/providers/{body['id']}").get_json()
    assert (shown["status"], shown["liveness"]) == ("offline", "offline")
    assert events(client, "outage") == []


def test_without_any_pulse_yet_there_is_nothing_to_be_blind_against(graced):
    app, _ = graced
    client = app.test_client()
    body = client.post("/providers", json=provider_body()).get_json()
    time.sleep(LEASE_S + 0.3)
    assert client.get(f"/providers/{body['id']}").get_json()["status"] == "offline"


def test_claims_are_not_ended_by_an_outage(graced):
    app, store = graced
    client = app.test_client()
    body = client.post("/providers", json=provider_body()).get_json()
    claim = client.post("/providers/claim", json={"claim_ttl_s": 1}).get_json()
    store.pulse()
    time.sleep(LEASE_S + 0.3)
    shown = client.get(f"/providers/{body['id']}").get_json()
    assert (shown["status"], shown["liveness"]) == ("busy", "grace")
    assert shown["claim"] is not None
    confirmed = client.post(f"/providers/{body['id']}/claim/confirm", json={"claim_id": claim["claim_id"]})
    assert confirmed.status_code == 200, confirmed.get_json()
    assert events(client, "claim_expired") == [] and events(client, "claim_released") == []


def test_grace_off_lets_leases_lapse_whatever_the_pulse(make_app):
    app = make_app(heartbeat_ttl_s=LEASE_S, outage_grace_after_s=0)
    store, client = app.extensions[EXTENSION].store, app.test_client()
    body = client.post("/providers", json=provider_body()).get_json()
    store.pulse()
    time.sleep(LEASE_S + 0.3)
    assert client.get(f"/providers/{body['id']}").get_json()["status"] == "offline"


# ---- under real gunicorn, with daemons that keep trying ------------------------------------------


class Daemons:
    """Daemons heartbeating every 0.3 s over HTTP, whatever the answers; one can be killed."""

    def __init__(self, url: str, ids: list[str]) -> None:
        self.url, self.ids = url, ids
        self.dead: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.wait(0.3):
            for provider_id in self.ids:
                if provider_id in self.dead:
                    continue
                try:
                    session.post(f"{self.url}/providers/{provider_id}/heartbeat", timeout=0.5)
                except requests.RequestException:
                    pass  # the registry is away: try again next beat

    def __enter__(self) -> "Daemons":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def register_fleet(url: str, n: int) -> list[str]:
    return [
        requests.post(f"{url}/providers", json=provider_body(name=f"rig-{i}", gpus=[gpu()]), timeout=5).json()["id"]
        for i in range(n)
    ]


def offline_ids(url: str) -> set[str]:
    feed = requests.get(f"{url}/providers/events?after=0", timeout=5).json()["events"]
    return {e["provider_id"] for e in feed if e["type"] == "offline"}


def seconds_until_offline(url: str, provider_id: str, since: float) -> float:
    """Poll the provider until it reads offline; return the seconds from `since`."""
    while True:
        try:
            status = requests.get(f"{url}/providers/{provider_id}", timeout=2).json()["status"]
        except (requests.RequestException, ValueError, KeyError):
            status = None  # Redis is still waking up: 503 JSON
        if status == "offline":
            return time.monotonic() - since
        assert time.monotonic() - since < 10, "the dead daemon is still not offline"
        time.sleep(0.05)


def wait_for_offline_event(url: str, provider_id: str, timeout: float = 10) -> None:
    """Wait until the sweeper has written the provider's offline event (the leader may have
    changed during the outage)."""
    deadline = time.monotonic() + timeout
    while provider_id not in offline_ids(url):
        assert time.monotonic() < deadline, "no offline event"
        time.sleep(0.1)
    time.sleep(1)  # and no other offline event follows


@pytest.fixture
def server(redis_db, redis_server) -> Iterator[GunicornServer]:
    instance = GunicornServer(
        redis_server.url, heartbeat_ttl_s=3, heartbeat_interval_s=1, outage_grace_after_s=1,
        sweep_interval_s=0.2, redis_timeout_s=0.5,
    )
    instance.start()
    yield instance
    instance.stop()


def test_a_registry_stopped_longer_than_a_lease_puts_no_live_daemon_offline(server):
    ids = register_fleet(server.url, 20)
    with Daemons(server.url, ids) as daemons:
        time.sleep(1.5)
        daemons.dead.add(ids[0])  # this daemon dies with the registry
        server.stop()
        time.sleep(5)  # longer than the 3 s lease
        server.start()
        back = time.monotonic()
        assert requests.get(f"{server.url}/providers/{ids[0]}", timeout=5).json()["liveness"] == "grace"
        assert 3 - 0.5 <= seconds_until_offline(server.url, ids[0], back) <= 3 + 1.5
        wait_for_offline_event(server.url, ids[0])
    assert offline_ids(server.url) == {ids[0]}
    listed = {p["id"]: p for p in requests.get(f"{server.url}/providers", timeout=5).json()}
    assert all(listed[i]["status"] == "idle" and listed[i]["liveness"] == "live" for i in ids[1:])


def test_a_redis_pause_longer_than_a_lease_puts_no_live_daemon_offline(server, redis_server):
    ids = register_fleet(server.url, 20)
    with Daemons(server.url, ids) as daemons:
        time.sleep(1.5)
        daemons.dead.add(ids[0])
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(5)
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        back = time.monotonic()
        assert 3 - 0.5 <= seconds_until_offline(server.url, ids[0], back) <= 3 + 1.5
        wait_for_offline_event(server.url, ids[0])
    assert offline_ids(server.url) == {ids[0]}
