"""The Redis layout operators read with redis-cli, as docs/REDIS_KEYS.md documents it."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from app import create_app
from app.config import Settings
from app.jobs.sweeper import Sweeper
from app.registry import EXTENSION
from app.store import canonical_name
from app.jobs.leader import LeaderLease
from app.store.dataset import DataSet
from app.store.lock import LeaseLock
from app.store.migrations import migrate

from .conftest import ADMIN_KEY, bearer_client, gpu, provider_body

KEY_LAYOUT = Path(__file__).resolve().parent.parent / "docs" / "REDIS_KEYS.md"


LIVE_PIECE = '"is_healthy":true'


def lapse(redis_db, provider_id: str) -> None:
    redis_db.hset(f"registry:provider:{provider_id}", "lease_expires_at", 1)
    redis_db.zadd("registry:leases", {provider_id: 1})


def test_provider_hash_holds_the_documented_fields(providers, redis_db):
    body = providers.register(status="busy")
    stored = redis_db.hgetall(f"registry:provider:{body['id']}")

    assert set(stored) == {
        "id", "owner_id", "name", "hostname", "ip_address", "location", "status", "gpu_specs",
        "gpu_live", "metadata", "registered_at", "last_seen_at", "lease_expires_at", "index_keys", "gpu_keys",
        "version", "summary", "token_hash", "bucket_stems",
    }
    assert stored["id"] == body["id"]
    assert stored["status"] == "busy"
    # Each GPU as two ready-made pieces of its JSON object, joined by \x1e (one GPU here).
    assert json.loads("{" + stored["gpu_specs"] + "," + stored["gpu_live"] + "}") == body["gpus"][0]
    assert stored["gpu_live"] == LIVE_PIECE
    assert json.loads(stored["metadata"]) == {"rack": "r12"}
    assert int(stored["lease_expires_at"]) - int(stored["last_seen_at"]) == 30_000
    assert stored["registered_at"] == stored["last_seen_at"]
    assert stored["gpu_keys"] == "nvidia+a100|ampere|81920"
    assert sorted(stored["index_keys"].split()) == ["registry:arch:ampere", "registry:location:eu-west"]
    assert stored["bucket_stems"] == "registry:gpu:nvidia+a100:1:81920 registry:gpus:1:81920"
    assert stored["version"] == "1"


def test_lease_key_ttl_shows_the_time_left(providers, redis_db):
    body = providers.register()
    key = f"registry:lease:{body['id']}"
    assert 29 <= redis_db.ttl(key) <= 30
    stored = redis_db.hgetall(f"registry:provider:{body['id']}")
    assert redis_db.get(key) == stored["last_seen_at"]


def test_leases_zset_is_scored_by_the_deadline(providers, redis_db):
    body = providers.register()
    deadline = redis_db.hget(f"registry:provider:{body['id']}", "lease_expires_at")
    assert redis_db.zrange("registry:leases", 0, -1, withscores=True) == [(body["id"], int(deadline))]


def test_gpu_indexes_bucket_providers_by_kth_largest_vram_and_status(providers, redis_db):
    body = providers.register(
        gpus=[gpu("NVIDIA A100", 40960), gpu("NVIDIA A100", 81920), gpu("H100", 94208)], status="busy"
    )
    pid = body["id"]

    def scores(key: str) -> list[tuple[str, float]]:
        return redis_db.zrange(key, 0, -1, withscores=True)

    # The index key holds the VRAM sizes present; each size has a bucket per stored status.
    assert scores("registry:gpu:nvidia+a100:1") == [("81920", 81920)]
    assert scores("registry:gpu:nvidia+a100:1:81920:busy") == [(pid, 81920)]
    assert scores("registry:gpu:nvidia+a100:2") == [("40960", 40960)]
    assert scores("registry:gpu:nvidia+a100:2:40960:busy") == [(pid, 40960)]
    assert not redis_db.exists("registry:gpu:nvidia+a100:3")
    assert scores("registry:gpu:h100:1:94208:busy") == [(pid, 94208)]
    assert scores("registry:gpus:1:94208:busy") == [(pid, 94208)]
    assert scores("registry:gpus:2:81920:busy") == [(pid, 81920)]
    assert scores("registry:gpus:3:40960:busy") == [(pid, 40960)]


def test_a_status_change_moves_the_provider_between_buckets(providers, redis_db):
    pid = providers.register(gpus=[gpu("L4", 24576)])["id"]
    providers.heartbeat(pid, status="maintenance")
    assert redis_db.zrange("registry:gpu:l4:1:24576:maintenance", 0, -1) == [pid]
    assert not redis_db.exists("registry:gpu:l4:1:24576:idle")
    assert redis_db.zrange("registry:gpu:l4:1", 0, -1) == ["24576"]


def test_a_size_leaves_the_gpu_index_with_its_last_provider(client, providers, redis_db):
    small = providers.register(gpus=[gpu("L4", 24576)])["id"]
    big = providers.register(gpus=[gpu("L4", 49152)])["id"]
    assert redis_db.zrange("registry:gpu:l4:1", 0, -1) == ["24576", "49152"]
    assert redis_db.zrangebyscore("registry:gpu:l4:1", 30000, "+inf") == ["49152"]
    client.delete(f"/providers/{small}")
    assert redis_db.zrange("registry:gpu:l4:1", 0, -1) == ["49152"]
    assert redis_db.zrange("registry:gpu:l4:1:49152:idle", 0, -1) == [big]


def test_status_architecture_location_and_all_ids_are_zsets_scored_0(providers, redis_db):
    ids = sorted(providers.register()["id"] for _ in range(3))
    zsets = ("status:idle", "providers", "arch:ampere", "location:eu-west")
    for key in (f"registry:{name}" for name in zsets):
        assert redis_db.type(key) == "zset"
        assert redis_db.zrange(key, 0, -1, withscores=True) == [(i, 0) for i in ids]


def test_a_provider_is_in_exactly_one_status_set(providers, registry, redis_db):
    body = providers.register()
    providers.heartbeat(body["id"], status="busy")
    providers.heartbeat(body["id"], status="maintenance")
    lapse(redis_db, body["id"])
    Sweeper(registry.store, interval_s=1).sweep_once()
    members = {s: redis_db.zrange(f"registry:status:{s}", 0, -1) for s in
               ("idle", "busy", "maintenance", "error", "offline")}
    assert members == {"idle": [], "busy": [], "maintenance": [], "error": [], "offline": [body["id"]]}


def test_irregular_set_holds_providers_with_mixed_or_unhealthy_gpus(providers, redis_db):
    plain = providers.register(gpus=[gpu("A100"), gpu("A100")])["id"]
    mixed = providers.register(gpus=[gpu("A100"), gpu("H100")])["id"]
    sick = providers.register(gpus=[gpu("A100", is_healthy=False)])["id"]
    assert redis_db.type("registry:irregular") == "set"
    assert redis_db.smembers("registry:irregular") == {mixed, sick}
    providers.heartbeat(sick, gpu_metrics=[{"is_healthy": True}])
    assert redis_db.smembers("registry:irregular") == {mixed}
    assert plain not in redis_db.smembers("registry:irregular")


def test_queries_leave_no_scratch_keys(providers, client, redis_db):
    providers.register(gpus=[gpu("A100", 81920, architecture="ampere")], location="eu-west")
    client.get("/providers?gpu_model=a100&min_vram=1000&architecture=ampere&location=eu-west"
               "&status=idle,busy&healthy_only=true")
    assert redis_db.keys("registry:tmp:*") == []


@pytest.mark.parametrize(
    "model",
    ["Weird:Model", "star*model", "brace{model}", "two  words   model", "Ünïcødé GPU 型号", "a|b", "100%"],
)
def test_model_names_with_special_characters_stay_inside_their_index(providers, redis_db, model):
    body = providers.register(gpus=[gpu(model, 1024), gpu(model, 2048)])
    gpu_keys = redis_db.keys("registry:gpu:*")
    canonical = canonical_name(model)
    assert sorted(gpu_keys) == [
        f"registry:gpu:{canonical}:1", f"registry:gpu:{canonical}:1:2048:idle",
        f"registry:gpu:{canonical}:2", f"registry:gpu:{canonical}:2:1024:idle",
    ]
    assert re.fullmatch(r"[A-Za-z0-9_.~%+\-]+", canonical), canonical
    for spelling in (model, model.upper(), f"  {model} "):
        assert providers.ids(f"gpu_model={quote(spelling)}") == [body["id"]]
    assert redis_db.zrange(f"registry:gpu:{canonical}:2:1024:idle", 0, -1, withscores=True) == [(body["id"], 1024)]


def test_a_model_named_like_an_index_suffix_does_not_collide(providers):
    # `A100:2` must not land in, or be read from, the index of "two A100s".
    colon = providers.register(gpus=[gpu("A100:2")])["id"]
    two = providers.register(gpus=[gpu("A100"), gpu("A100")])["id"]
    assert providers.ids("gpu_model=A100&min_gpus=2") == [two]
    assert providers.ids("gpu_model=A100:2") == [colon]
    assert providers.ids("gpu_model=A100:2&min_gpus=2") == []


def test_location_and_architecture_names_are_canonical_in_keys(providers, redis_db):
    providers.register(gpus=[gpu(architecture="Ada Lovelace*")], location="São Paulo:1")
    assert redis_db.exists("registry:arch:ada+lovelace%2A")
    assert redis_db.exists("registry:location:s%C3%A3o+paulo%3A1")


def test_key_prefix_separates_two_registries_on_one_redis(settings, redis_db, providers):
    mine = providers.register()["id"]
    other = create_app(dataclasses.replace(settings, key_prefix="other:"))
    other_client = bearer_client(other, ADMIN_KEY)
    theirs = other_client.post("/providers", json=provider_body()).get_json()["id"]
    try:
        assert providers.ids() == [mine]
        assert [p["id"] for p in other_client.get("/providers").get_json()] == [theirs]
        assert other_client.get(f"/providers/{mine}").status_code == 404
        assert all(k.startswith(("registry:", "other:")) for k in redis_db.keys("*"))
        assert redis_db.exists(f"other:provider:{theirs}", f"other:lease:{theirs}") == 2
    finally:
        other.extensions[EXTENSION].close()


# ---- round trips -----------------------------------------------------------------------------


def command_calls(redis_db) -> dict[str, int]:
    stats = redis_db.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    return {k: v for k, v in calls.items() if not k.startswith(("config", "info"))}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Round trips counted here are the store's own: rate limiting adds its counters' calls.
    return dataclasses.replace(settings, rate_limit_enabled=False)


@pytest.fixture
def warm(client, providers):
    """Run every script once, so that counts below do not include loading them."""
    body = providers.register()
    providers.heartbeat(body["id"])
    client.put(f"/providers/{body['id']}", json=provider_body())
    client.get("/providers?status=idle")
    client.delete(f"/providers/{body['id']}")


@pytest.mark.usefixtures("warm")
def test_a_heartbeat_is_one_script_call(providers, redis_db):
    body = providers.register()
    redis_db.config_resetstat()
    providers.heartbeat(body["id"], status="busy", gpu_metrics=[{"temperature_c": 50}])
    calls = command_calls(redis_db)
    # One call of the heartbeat FUNCTION (FCALL), and nothing else outside it.
    assert calls.pop("fcall") == 1 and "evalsha" not in calls
    # What the function did inside that one call: no scan of any kind.
    assert not set(calls) & {"keys", "scan", "sscan", "zscan", "hscan"}


@pytest.mark.usefixtures("warm")
@pytest.mark.parametrize("route", ["register", "update", "delete"])
def test_a_write_is_one_atomic_script_call(client, providers, redis_db, route):
    body = providers.register()
    redis_db.config_resetstat()
    if route == "register":
        client.post("/providers", json=provider_body(id=body["id"]))
    elif route == "update":
        client.put(f"/providers/{body['id']}", json=provider_body())
    else:
        client.delete(f"/providers/{body['id']}")
    assert command_calls(redis_db)["evalsha"] == 1


@pytest.mark.usefixtures("warm")
def test_a_query_is_one_script_call_then_one_hmget_per_row_of_the_page(client, providers, redis_db):
    for i in range(60):
        model, status = ("A100" if i % 2 else "H100"), ("busy" if i % 3 else "idle")
        providers.register(gpus=[gpu(model, 40960 + i)], status=status)
    redis_db.config_resetstat()
    response = client.get("/providers?gpu_model=a100&min_vram=40970&status=busy&limit=5")
    assert len(response.get_json()) == 5
    calls = command_calls(redis_db)
    assert calls.pop("evalsha") == 1
    assert calls["hgetall"] == 1  # the GPU catalog, in the script
    assert calls["hmget"] == 5  # the page's rows, pipelined after it: not every provider
    assert not set(calls) & {"keys", "scan", "zscan", "sscan", "hscan", "smembers"}


@pytest.mark.usefixtures("warm")
def test_a_get_is_one_script_call(providers, redis_db):
    body = providers.register()
    redis_db.config_resetstat()
    providers.get(body["id"])
    # Every script reads the pulse first (outage grace, lib.lua).
    assert command_calls(redis_db) == {"evalsha": 1, "time": 1, "get": 1, "hgetall": 1}


@pytest.mark.usefixtures("warm")
def test_an_exact_model_query_reads_one_catalog_field_not_the_catalog(client, providers, redis_db):
    for i in range(4):
        providers.register(gpus=[gpu("A100", 40960), gpu("H100", 81920)])
    redis_db.config_resetstat()
    assert len(client.get("/providers?gpu_model_exact=a100&limit=2").get_json()) == 2
    calls = command_calls(redis_db)
    assert calls["hget"] == 1 and calls["hmget"] == 2 and "hgetall" not in calls


# ---- the key layout document shows what the store writes --------------------------------------------------


def layout_section(title: str) -> str:
    text = KEY_LAYOUT.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def documented_key_patterns() -> list[re.Pattern[str]]:
    """The keys the layout table lists, as regexes (`<...>` is any non-empty part)."""
    section = layout_section("Redis key layout")
    names = sorted(set(re.findall(r"^\| `(registry:[^`]+)`", section, flags=re.M)))
    assert names, "the key layout lists no keys"
    return [
        re.compile("[^ ]+".join(re.escape(part) for part in re.split(r"<[^>]+>", name)) + "$")
        for name in names
    ]


def test_the_layout_documents_every_key_the_store_writes_and_no_other(client, providers, registry, redis_db):
    body = providers.register(
        gpus=[gpu("A100", 40960, architecture="ampere"), gpu("H100", 81920, is_healthy=False)],
        location="eu-west",
    )
    providers.register(status="busy")
    lapse(redis_db, body["id"])
    Sweeper(registry.store, interval_s=1).sweep_once()
    migrate(registry.store)
    providers.heartbeat(body["id"], status="maintenance")
    providers.register()  # the only idle provider: a scheduler claims it
    claimed = client.post(
        "/providers/claim", json={"claimant": "scheduler-1", "claim_ttl_s": 60},
        headers={"Idempotency-Key": "claim-1"},
    )
    assert claimed.status_code == 200, claimed.get_json()
    client.get("/providers?gpu_model=a100&status=idle&healthy_only=true")
    # The keys of snapshots and restores (app/snapshot), as they leave them mid-snapshot.
    registry.store.set_generation("generation-1")
    snapshot_lock = LeaseLock(redis_db, registry.store.keys.snapshot_lock)
    assert snapshot_lock.acquire()
    # The background jobs' (app/jobs): the leader's lease, and the flag of a restore running.
    assert LeaderLease(redis_db, registry.store.keys.leader).step()
    DataSet(registry.store.keys).mark_restoring(redis_db, "leader", 5)
    # An outage of the registry: its pulse stopped a minute ago (outage grace, lib.lua).
    redis_db.set(registry.store.keys.pulse, registry.store.now_ms() - 60_000)
    providers.get(body["id"])
    patterns = documented_key_patterns()

    keys = redis_db.keys("*")
    snapshot_lock.release()
    undocumented = [k for k in keys if not any(p.match(k) for p in patterns)]
    assert undocumented == []
    unused = [p.pattern for p in patterns if not any(p.match(k) for k in keys)]
    # Scratch keys live only inside one script call; rate limits are off in this module.
    assert unused == [p.pattern for p in patterns if "tmp" in p.pattern or "ratelimit" in p.pattern]


def test_the_layout_hgetall_example_shows_the_stored_fields(providers, redis_db):
    body = providers.register()
    section = layout_section("Redis key layout")
    example = section[section.index("HGETALL registry:provider:") :]
    example = example[: example.index("```")]
    items = re.findall(r'^\s*(\d+)\) "(.*)"$', example, flags=re.M)
    shown = [value for number, value in items if int(number) % 2 == 1]  # field, value, ...
    assert sorted(shown) == sorted(redis_db.hgetall(f"registry:provider:{body['id']}"))
