"""The registry on a Redis Cluster: every key in one slot through the prefix's hash tag."""
from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
import redis

from app.config import Settings
from app.jobs.leader import LeaderLease
from app.registry import EXTENSION

from .conftest import GENEROUS_LIMIT, TEST_API_KEYS, app_builder, gpu, provider_body
from .redis_cluster import RedisClusterNodes

PREFIX = "{registry}:"


@pytest.fixture(scope="session")
def cluster_nodes() -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes(primaries=3, replicas_per_primary=1)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def cluster(cluster_nodes: RedisClusterNodes) -> RedisClusterNodes:
    cluster_nodes.flush()
    return cluster_nodes


@pytest.fixture
def make_app(cluster: RedisClusterNodes) -> Iterator[Any]:
    yield from app_builder(Settings(
        redis_url="", redis_cluster_nodes=cluster.addresses, key_prefix=PREFIX,
        api_keys=TEST_API_KEYS, rate_limit_per_client=GENEROUS_LIMIT,
        rate_limit_heartbeat=GENEROUS_LIMIT, rate_limit_unauthenticated=GENEROUS_LIMIT,
        consul_enabled=False,
    ))


@pytest.fixture
def app(make_app: Any) -> Any:
    return make_app()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def slot_owner(cluster: RedisClusterNodes) -> redis.Redis:
    """The primary that holds the registry's slot."""
    for primary in cluster.primaries():
        if primary.dbsize():
            return primary
    raise AssertionError("no primary holds the registry's keys")


def register(client: Any, **fields: Any) -> str:
    response = client.post("/providers", json=provider_body(**fields))
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def test_every_key_lands_in_the_hash_tags_slot_on_one_primary(client, cluster):
    register(client, gpus=[gpu("A100", architecture="ampere"), gpu("H100", architecture="hopper")])
    owner = slot_owner(cluster)
    keys = owner.keys("*")
    assert keys and all(key.startswith(PREFIX) for key in keys)
    assert {owner.cluster("keyslot", key) for key in keys} == {owner.cluster("keyslot", PREFIX)}
    for primary in cluster.primaries():
        if primary.connection_pool.connection_kwargs["port"] != owner.connection_pool.connection_kwargs["port"]:
            assert primary.dbsize() == 0


def test_register_heartbeat_query_claim_summary_and_delete(client):
    a100 = register(client, gpus=[gpu("A100")], location="eu-west")
    h100 = register(client, gpus=[gpu("H100", vram_mb=94208)], location="us-east")
    assert client.post(f"/providers/{a100}/heartbeat", json={"status": "idle"}).status_code == 200
    assert client.get(f"/providers/{a100}").get_json()["status"] == "idle"

    # Filters with no key, an index key, scratch keys (location with status) and a sort.
    assert len(client.get("/providers").get_json()) == 2
    assert [p["id"] for p in client.get("/providers?gpu_model=a100").get_json()] == [a100]
    assert [p["id"] for p in client.get("/providers?min_vram=90000").get_json()] == [h100]
    assert [p["id"] for p in client.get("/providers?location=us-east&status=idle").get_json()] == [h100]
    assert [p["id"] for p in client.get("/providers?sort=-vram").get_json()] == [h100, a100]

    claimed = client.post("/providers/claim", json={"count": 1, "gpu_model": "h100", "claim_ttl_s": 60})
    assert claimed.status_code == 200
    claim_id = claimed.get_json()["claim_id"]
    assert client.post(f"/providers/{h100}/claim/confirm", json={"claim_id": claim_id}).status_code == 200
    summary = client.get("/providers/summary").get_json()
    assert summary["by_status"]["busy"] == 1 and summary["by_status"]["idle"] == 1
    assert client.post(f"/providers/{h100}/release", json={"claim_id": claim_id}).status_code == 200

    assert client.delete(f"/providers/{a100}").status_code == 204
    assert client.get(f"/providers/{a100}").status_code == 404
    assert client.get("/health").status_code == 200


def test_events_long_poll_wakes_on_a_registration(app, client):
    after = client.get("/providers/events").get_json()["next"]
    started = time.monotonic()
    empty = client.get(f"/providers/events?after={after}&wait=1").get_json()
    assert empty["events"] == [] and time.monotonic() - started >= 0.9
    provider_id = register(client)
    page = client.get(f"/providers/events?after={after}&wait=5").get_json()
    assert [(e["type"], e["provider_id"]) for e in page["events"]] == [("registered", provider_id)]


def test_idempotent_retry_replays_on_the_cluster(client):
    headers = {"Idempotency-Key": "cluster-key-1"}
    first = client.post("/providers", json=provider_body(), headers=headers)
    again = client.post("/providers", json=provider_body(), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]


def test_rate_limits_count_in_the_cluster(make_app, cluster):
    limited = make_app(rate_limit_per_client="3/minute").test_client()
    statuses = [limited.get("/providers").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    owner = slot_owner(cluster)
    assert owner.keys(f"{PREFIX}ratelimit*")


def test_sweep_leader_lease_wipe_and_restore(app, client):
    registry = app.extensions[EXTENSION]
    store = registry.store
    ids = sorted(register(client, name=f"rig-{i}") for i in range(5))

    lease = LeaderLease(registry.redis, store.keys.leader)
    other = LeaderLease(registry.redis, store.keys.leader)
    assert lease.step() and not other.step()
    lease.release()
    assert other.step()

    transitions, more = store.sweep()
    assert transitions == [] and not more

    now, hashes = store.read_hashes(store.provider_ids())
    assert [pid for pid, _ in hashes] == ids
    assert store.wipe() > 0
    assert store.count() == 0
    assert store.restore(hashes, now) == 5
    assert sorted(store.provider_ids()) == ids
    assert client.get(f"/providers/{ids[0]}").get_json()["status"] == "offline"


def test_acknowledged_writes_wait_for_the_slots_replica(make_app, cluster):
    client = make_app(redis_wait_replicas=1, redis_wait_timeout_ms=500).test_client()
    provider_id = register(client)
    claimed = client.post("/providers/claim", json={"count": 1, "claim_ttl_s": 60})
    assert claimed.status_code == 200
    assert client.delete(f"/providers/{provider_id}").status_code == 204


def test_reads_from_the_slots_replica_with_evalsha_ro(make_app, cluster):
    client = make_app(redis_read_from_replicas=True, redis_wait_replicas=1).test_client()
    provider_id = register(client)
    replicas = [node.client() for node in cluster.nodes if node.client().info("replication")["role"] == "slave"]
    for replica in replicas:
        replica.config_resetstat()
    assert client.get(f"/providers/{provider_id}").status_code == 200
    assert len(client.get("/providers").get_json()) == 1
    calls = sum(r.info("commandstats").get("cmdstat_evalsha_ro", {}).get("calls", 0) for r in replicas)
    assert calls >= 2
