"""Three registry instances on one Redis: one sweeper, no double grants, one change feed."""
from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pytest
import requests

from .conftest import provider_body, wait_until
from .consul_agent import ConsulAgent
from .gunicorn_server import GunicornServer

LEADER_KEY = "registry:lock:leader"
PROVIDERS = 12
CLAIMERS = 18


@pytest.fixture
def instances(redis_server, redis_db, agent: ConsulAgent) -> Iterator[list[GunicornServer]]:
    servers = [
        GunicornServer(
            redis_server.url, workers=2, heartbeat_ttl_s=3, heartbeat_interval_s=1,
            consul_enabled="true", consul_address=agent.address, advertise_address="127.0.0.1",
            consul_check_interval="1s",
        )
        for _ in range(3)
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def read_feed(server: GunicornServer, after: str, until: int, timeout: float = 20) -> list[dict[str, Any]]:
    """Read events after `after` through `server` until `until` of them came (or `timeout`)."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(events) < until and time.monotonic() < deadline:
        page = requests.get(f"{server.url}/providers/events", params={"after": after, "wait": 1}, timeout=10).json()
        events += page["events"]
        after = page["next"]
    return events


def test_three_instances_register_in_consul_and_share_one_sweeper(instances, redis_db, agent):
    assert wait_until(lambda: len(agent.services) == 3, timeout=10)
    ports = sorted(service["Port"] for service in agent.services.values())
    assert ports == sorted(server.port for server in instances)
    assert wait_until(lambda: len(agent.passing("provider-registry")) == 3, timeout=10)

    # One holder of the leader key all along, among six serving processes.
    holders = set()
    for _ in range(30):
        holders.add(redis_db.get(LEADER_KEY))
        time.sleep(0.1)
    assert len(holders) == 1 and None not in holders
    became = sum(server.log().count("became the leader") for server in instances)
    assert became == 1


def test_claims_through_three_instances_never_grant_a_provider_twice(instances):
    for i in range(PROVIDERS):
        server = instances[i % 3]
        assert requests.post(f"{server.url}/providers", json=provider_body(name=f"rig-{i}"), timeout=5).status_code == 201
    start = threading.Barrier(CLAIMERS)

    def claim_until_none_left(n: int) -> list[str]:
        server, granted = instances[n % 3], []
        with requests.Session() as session:
            start.wait()
            while True:
                response = session.post(f"{server.url}/providers/claim", json={"count": 1, "claim_ttl_s": 600}, timeout=10)
                assert response.status_code in (200, 409), response.text
                if response.status_code == 409:
                    return granted
                granted += [p["id"] for p in response.json()["providers"]]

    with ThreadPoolExecutor(CLAIMERS) as pool:
        granted = [pid for batch in pool.map(claim_until_none_left, range(CLAIMERS)) for pid in batch]
    assert len(granted) == PROVIDERS and len(set(granted)) == PROVIDERS


def test_every_instance_reads_one_change_feed_with_each_transition_once(instances):
    first = instances[0]
    after = requests.get(f"{first.url}/providers/events", timeout=5).json()["next"]
    ids = []
    for i in range(6):
        server = instances[i % 3]
        ids.append(requests.post(f"{server.url}/providers", json=provider_body(name=f"rig-{i}"), timeout=5).json()["id"])
    for i, provider_id in enumerate(ids[:3]):
        server = instances[(i + 1) % 3]
        response = requests.post(f"{server.url}/providers/claim", json={"count": 1, "claim_ttl_s": 600}, timeout=5)
        assert response.status_code == 200
    # No heartbeats: every lease lapses (3 s), and the one sweeper turns each offline once.
    expected = 6 + 3 + 6 + 3  # registered, claimed, offline, and the claims released with the lease
    feeds = [read_feed(server, after, expected) for server in instances]
    assert feeds[0] == feeds[1] == feeds[2]
    kinds = Counter((event["type"], event["provider_id"]) for event in feeds[0])
    for provider_id in ids:
        assert kinds[("registered", provider_id)] == 1
        assert kinds[("offline", provider_id)] == 1
    assert sum(n for (kind, _), n in kinds.items() if kind == "claimed") == 3
    assert all(n == 1 for n in kinds.values()), kinds
    # Several sweeps later: still nothing new.
    assert read_feed(first, feeds[0][-1]["id"], 1, timeout=2) == []
