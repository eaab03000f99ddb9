"""Restore: every provider back from the latest snapshot, offline, with every index rebuilt."""
from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import redis

from app.registry import Registry
from app.store.keys import STATUSES
from app.snapshot import NothingToRestore, RestoreRefused, restore, take_snapshot

from .conftest import Providers, gpu, sql
from .conftest import redis_state as full_state


def redis_state(client: redis.Redis) -> dict[str, Any]:
    """Every key of the registry with its value, by type."""
    state: dict[str, Any] = {}
    for key in client.scan_iter("registry:*"):
        kind = client.type(key)
        if kind == "hash":
            state[key] = client.hgetall(key)
        elif kind == "zset":
            state[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            state[key] = client.smembers(key)
        elif kind == "stream":
            state[key] = client.xlen(key)
        else:
            state[key] = client.get(key)
    return state


def register_a_varied_registry(providers: Providers) -> list[str]:
    """Providers that touch every index: models, counts, VRAM, architectures, locations, health."""
    bodies = [
        dict(gpus=[gpu("NVIDIA A100", 81920, architecture="ampere")] * 2, location="eu-west"),
        dict(gpus=[gpu("NVIDIA A100", 40960, architecture="Ampere"), gpu("RTX 4090", 24576,
             architecture="ada")], location="us-east"),
        dict(gpus=[gpu("NVIDIA H100", 81920, architecture="hopper", is_healthy=False)], location=None),
        dict(gpus=[gpu("Odd:Model*{x}", 1024)], location="eu west  ", metadata={"ü": "ñ"}),
    ]
    ids = [providers.register(name=f"rig-{i}", **body)["id"] for i, body in enumerate(bodies)]
    providers.heartbeat(ids[0], status="busy")
    providers.heartbeat(ids[1], status="maintenance")
    return ids


def test_restore_after_a_flush_brings_back_every_provider_and_index_offline(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    ids = register_a_varied_registry(providers)
    before = redis_state(redis_db)
    queries = ["gpu_model=nvidia a100&min_vram=50000", "min_gpus=2", "architecture=ampere",
               "location=eu-west", "healthy_only=true", "gpu_model=odd:model*{x}", ""]
    matched = {q: providers.ids(q) for q in queries}
    take_snapshot(registry.store, database_url)
    redis_db.flushall()

    result = restore(registry.store, database_url)

    assert (result.restored, result.providers) == (4, 4)
    after = redis_state(redis_db)
    now_ms = registry.store.now_ms()
    for provider_id in ids:
        key = f"registry:provider:{provider_id}"
        old, new = dict(before[key]), dict(after[key])
        assert new.pop("status") == "offline"
        assert int(new.pop("lease_expires_at")) <= now_ms
        old.pop("status"), old.pop("lease_expires_at")
        assert new == old  # every other field exactly as it was, index_keys included
        assert f"registry:lease:{provider_id}" not in after
    indexes = [k for k in before if k.split(":")[1] in ("arch", "location")]
    assert len(indexes) > 2
    for key in indexes + ["registry:providers", "registry:irregular"]:
        assert after[key] == before[key], key
    # GPU buckets carry the stored status: the same members, now all in the offline buckets.
    assert gpu_buckets_without_status(after) == gpu_buckets_without_status(before)
    assert all(k.endswith(":offline") for k in after if is_gpu_bucket(k))
    assert after["registry:status:offline"] == [(i, 0.0) for i in sorted(ids)]
    # The capacity counters hold the same totals, all under offline now.
    expected: Counter[str] = Counter()
    for field, n in before["registry:counts"].items():
        expected["offline|" + field.split("|", 1)[1]] += int(n)
    assert {field: int(n) for field, n in after["registry:counts"].items()} == dict(expected)
    assert "registry:leases" not in after
    assert not [k for k in after if k.startswith("registry:status:") and k != "registry:status:offline"]
    for query, found in matched.items():
        assert providers.ids(query) == found, query
    assert [providers.get(i)["status"] for i in ids] == ["offline"] * 4


def is_gpu_bucket(key: str) -> bool:
    return key.split(":")[1] in ("gpu", "gpus") and key.rsplit(":", 1)[1] in STATUSES


def gpu_buckets_without_status(state: dict) -> dict:
    """GPU index sizes and bucket members, with the buckets of every status merged."""
    merged: dict = {}
    for key, value in state.items():
        if key.split(":")[1] not in ("gpu", "gpus"):
            continue
        stem = key.rsplit(":", 1)[0] if is_gpu_bucket(key) else key
        merged.setdefault(stem, set()).update(value)
    return merged


def test_restored_providers_come_back_online_with_a_heartbeat_under_the_same_ids(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    ids = [providers.register(name=f"rig-{i}")["id"] for i in range(3)]
    take_snapshot(registry.store, database_url)
    redis_db.flushall()
    restore(registry.store, database_url)

    assert providers.ids("status=offline") == sorted(ids)
    for provider_id in ids:
        assert providers.heartbeat(provider_id)["status"] == "idle"
    assert providers.ids("status=idle") == sorted(ids)
    assert providers.ids("status=offline") == []


def test_restore_drops_claims_and_keeps_every_other_field(
    registry: Registry, providers: Providers, client, redis_db: redis.Redis, database_url: str
) -> None:
    provider_id = providers.register()["id"]
    assert client.put(f"/providers/{provider_id}", json=_details(name="renamed")).status_code == 200
    claimed = client.post("/providers/claim", json={"count": 1, "claimant": "scheduler-a"})
    assert claimed.status_code == 200
    key = f"registry:provider:{provider_id}"
    redis_db.hset(key, "token_hash", "sha256:ab")  # a field the snapshot knows nothing about
    before = redis_db.hgetall(key)
    assert before["claimant"] == "scheduler-a" and "claim_id" in before
    take_snapshot(registry.store, database_url)
    redis_db.flushall()

    restore(registry.store, database_url)

    fields = redis_db.hgetall(key)
    assert (fields["version"], fields["token_hash"], fields["name"]) == (before["version"], "sha256:ab", "renamed")
    assert not [name for name in fields if name.startswith("claim")]
    assert providers.get(provider_id)["claim"] is None
    assert redis_db.zcard("registry:claims") == 0



def test_restore_sets_the_generation_so_that_snapshots_resume(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    providers.register()
    taken = take_snapshot(registry.store, database_url)
    redis_db.flushall()

    restore(registry.store, database_url)

    assert taken is not None and redis_db.get("registry:generation") == taken.generation
    assert take_snapshot(registry.store, database_url) is not None


def test_restore_refuses_a_redis_that_already_holds_providers(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    providers.register(name="snapshotted")
    take_snapshot(registry.store, database_url)
    redis_db.flushall()
    live = providers.register(name="live")["id"]
    before = redis_state(redis_db)

    with pytest.raises(RestoreRefused, match="Redis already holds 1 providers; .*--force"):
        restore(registry.store, database_url)

    assert redis_state(redis_db) == before
    assert providers.ids() == [live]


def test_forced_restore_replaces_every_provider_redis_holds(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    snapshotted = providers.register(name="snapshotted")["id"]
    take_snapshot(registry.store, database_url)
    redis_db.flushall()
    providers.register(name="live", gpus=[gpu("RTX 4090", 24576)], location="elsewhere")

    result = restore(registry.store, database_url, force=True)

    assert (result.restored, result.replaced) == (1, 1)
    assert providers.ids() == [snapshotted]
    assert not [k for k in redis_db.scan_iter("registry:*") if "4090" in k or "elsewhere" in k]


def test_dry_run_says_what_it_would_do_and_changes_nothing(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    for i in range(2):
        providers.register(name=f"rig-{i}")
    take_snapshot(registry.store, database_url)
    redis_db.flushall()

    result = restore(registry.store, database_url, dry_run=True)

    assert result.dry_run and result.providers == 2 and result.restored == 0
    assert "would restore 2 providers" in result.summary()
    assert redis_state(redis_db) == {}


def test_dry_run_reports_the_refusal_the_real_restore_would_meet(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    providers.register()
    take_snapshot(registry.store, database_url)

    with pytest.raises(RestoreRefused, match="dry run: would refuse"):
        restore(registry.store, database_url, dry_run=True)
    assert restore(registry.store, database_url, dry_run=True, force=True).replaced == 1


def test_restore_keeps_a_provider_that_registered_while_it_ran(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    provider_id = providers.register(name="before")["id"]
    other = providers.register(name="other", gpus=[gpu("RTX 4090", 24576)], location="us-east")["id"]
    take_snapshot(registry.store, database_url)
    redis_db.flushall()
    providers.register(id=provider_id, name="meanwhile")
    counts_of_meanwhile = redis_db.hgetall("registry:counts")
    rows = sql(database_url, "SELECT id, redis_hash FROM providers")

    import json

    written = registry.store.restore([(i, json.loads(raw)) for i, raw in rows], registry.store.now_ms())

    assert written == 1
    assert providers.get(provider_id)["name"] == "meanwhile"
    assert providers.get(provider_id)["status"] == "idle"
    assert providers.get(other)["status"] == "offline"
    assert redis_db.zrange("registry:status:offline", 0, -1) == [other]
    # Neither the kept provider's indexes nor its counters got the snapshot's copy of it.
    assert redis_db.zrange("registry:gpus:1:81920:idle", 0, -1) == [provider_id]
    assert redis_db.zrange("registry:gpus:1:24576:offline", 0, -1) == [other]
    assert not redis_db.exists("registry:gpus:1:81920:offline", "registry:gpus:1:24576:idle")
    counts = redis_db.hgetall("registry:counts")
    assert {f: n for f, n in counts.items() if f.startswith("idle|")} == counts_of_meanwhile
    assert sorted(f for f in counts if f.startswith("offline|")) == [
        "offline|lg|us-east", "offline|lp|us-east", "offline|mg|rtx 4090", "offline|mp|rtx 4090",
        "offline|mv|rtx 4090", "offline|n|",
    ]


def test_restore_without_any_snapshot_says_there_is_nothing_to_restore(
    registry: Registry, database_url: str
) -> None:
    with pytest.raises(NothingToRestore):
        restore(registry.store, database_url)


def test_restore_of_an_empty_snapshot_restores_nothing(
    registry: Registry, redis_db: redis.Redis, database_url: str
) -> None:
    take_snapshot(registry.store, database_url)
    redis_db.flushall()

    assert restore(registry.store, database_url).restored == 0


def test_nul_characters_in_metadata_are_accepted_and_come_back_unchanged(
    registry: Registry, providers: Providers, client, redis_db: redis.Redis, database_url: str
) -> None:
    metadata = {"note": "before\u0000after", "key\u0000": ["\u0000"], "plain": "\\u0000 is text"}
    response = client.post("/providers", json={**_body(), "metadata": metadata})
    assert response.status_code == 201
    provider_id = response.get_json()["id"]
    shown = providers.get(provider_id)

    take_snapshot(registry.store, database_url)
    # Analysts see U+FFFD where PostgreSQL cannot store a NUL.
    assert sql(database_url, "SELECT metadata FROM providers") == [(
        {"note": "before\ufffdafter", "key\ufffd": ["\ufffd"], "plain": "\\u0000 is text"},
    )]
    redis_db.flushall()
    restore(registry.store, database_url)

    back = providers.get(provider_id)
    assert back["metadata"] == metadata
    assert {k: v for k, v in back.items() if k not in ("status", "liveness", "lease_expires_at")} == {
        k: v for k, v in shown.items() if k not in ("status", "liveness", "lease_expires_at")
    }


def test_an_odd_provider_does_not_break_the_snapshot_of_the_others(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    good = [providers.register(name=f"good-{i}")["id"] for i in range(3)]
    odd = providers.register(name="odd")["id"]
    key = f"registry:provider:{odd}"
    # What no API call writes, but a bug or a hand edit could: PostgreSQL refuses both.
    redis_db.hset(key, mapping={"gpu_specs": "\"model_name\": {not json", "name": "bad\x00name\ttab"})
    odd_fields = redis_db.hgetall(key)

    result = take_snapshot(registry.store, database_url)

    assert result is not None and result.providers == 4
    rows = dict(sql(database_url, "SELECT id, gpus IS NOT NULL FROM providers"))
    assert rows == {**{i: True for i in good}, odd: False}
    assert sql(database_url, "SELECT name FROM providers WHERE id = %s", (odd,)) == [("bad\ufffdname\ttab",)]
    redis_db.flushall()
    restore(registry.store, database_url)
    restored = redis_db.hgetall(key)
    rebuilt = ("status", "lease_expires_at", "index_keys", "bucket_stems")
    assert {k: v for k, v in restored.items() if k not in rebuilt} == {
        k: v for k, v in odd_fields.items() if k not in rebuilt
    }
    assert restored["bucket_stems"] == ""  # outside the GPU indexes, and its hash says so
    assert redis_db.zrange("registry:providers", 0, -1) == sorted([*good, odd])
    assert providers.ids("min_vram=1") == sorted(good)  # the odd one is outside the GPU indexes


def _body() -> dict[str, Any]:
    from .conftest import provider_body

    return provider_body()


def _details(**fields: Any) -> dict[str, Any]:
    from .conftest import provider_body

    return provider_body(**fields)


def merged_restore_of_a_stale_copy(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str, redis_ahead: bool
) -> str:
    """Snapshot a provider, then leave Redis a copy that is newer or older than the snapshot's."""
    provider_id = providers.register(name="snapshotted", gpus=[gpu("NVIDIA A100", 81920)], location="eu-west")["id"]
    providers.heartbeat(provider_id, status="busy")
    take_snapshot(registry.store, database_url)
    redis_db.delete("registry:generation")  # Redis lost its data ...
    # ... and holds the provider again: re-registered after the snapshot (newer), or from an
    # old copy such as a stale RDB file (older), with other details.
    providers.register(id=provider_id, name="in-redis", gpus=[gpu("RTX 4090", 24576)], location="us-east")
    seen = int(redis_db.hget(f"registry:provider:{provider_id}", "last_seen_at"))
    snapshotted = int(sql(database_url, "SELECT extract(epoch FROM last_seen_at) * 1000 FROM providers")[0][0])
    redis_db.hset(f"registry:provider:{provider_id}", "last_seen_at",
                  str(max(seen, snapshotted + 1) if redis_ahead else snapshotted - 60_000))
    restore(registry.store, database_url, merge=True)
    return provider_id


def test_merged_restore_keeps_the_copy_in_redis_when_it_was_seen_later(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    provider_id = merged_restore_of_a_stale_copy(registry, providers, redis_db, database_url, redis_ahead=True)

    kept = providers.get(provider_id)
    assert (kept["name"], kept["status"], kept["location"]) == ("in-redis", "idle", "us-east")
    assert redis_db.zrange("registry:gpus:1:24576:idle", 0, -1) == [provider_id]
    assert not redis_db.exists("registry:gpus:1:81920:offline")
    assert redis_db.get("registry:generation") is not None  # snapshots resume


def test_merged_restore_replaces_the_copy_in_redis_when_the_snapshot_saw_it_later(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    provider_id = merged_restore_of_a_stale_copy(registry, providers, redis_db, database_url, redis_ahead=False)

    restored = providers.get(provider_id)
    assert (restored["name"], restored["status"], restored["location"]) == ("snapshotted", "offline", "eu-west")
    # Out of every index and counter of the stale copy, in those of the snapshot's.
    assert redis_db.zrange("registry:gpus:1:81920:offline", 0, -1) == [provider_id]
    assert not redis_db.exists("registry:gpus:1:24576:idle", "registry:location:us-east")
    assert redis_db.zrange("registry:status:idle", 0, -1) == []
    assert redis_db.zrange("registry:leases", 0, -1) == []
    counts = redis_db.hgetall("registry:counts")
    assert all(not field.startswith("idle|") for field in counts)
    assert counts["offline|n|"] == "1" and counts["offline|mg|nvidia a100"] == "1"
    assert providers.ids("gpu_model=NVIDIA A100") == [provider_id]
    assert providers.ids("gpu_model=RTX 4090") == []


def test_restore_without_merge_still_refuses_a_redis_that_holds_providers(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    providers.register()
    take_snapshot(registry.store, database_url)
    with pytest.raises(RestoreRefused):
        restore(registry.store, database_url)


def offline_copy(state: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """What a restore must make of a registry's keys: the same data set, every provider offline.

    Each provider hash keeps every field except its claim and outage grace, with the status
    `offline` and the lease ended by `now_ms`; leases, claims, grace and events are gone; GPU
    buckets and counters move under `offline`; every other key (IDs, detail indexes, GPU index
    sizes, catalogs, the irregular set, the generation marker) is as it was.
    """
    expected: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    for key, (kind, value) in state.items():
        name = key.split(":")[1]
        if name == "provider":
            fields = {f: v for f, v in value.items() if not f.startswith("claim") and f != "grace_until"}
            fields["status"] = "offline"
            fields["lease_expires_at"] = str(min(int(fields["lease_expires_at"]), now_ms))
            expected[key] = (kind, fields)
        elif name in ("lease", "leases", "claims", "grace", "events", "pulse", "lock"):
            continue
        elif name == "status":
            continue  # rebuilt below: every provider is offline
        elif name == "counts":
            for field, n in value.items():
                counts["offline|" + field.split("|", 1)[1]] += int(n)
        elif is_gpu_bucket(key):
            offline = key.rsplit(":", 1)[0] + ":offline"
            merged = dict(expected.get(offline, (kind, []))[1])
            merged.update(value)
            expected[offline] = (kind, sorted(merged.items(), key=lambda m: (m[1], m[0])))
        else:
            expected[key] = (kind, value)
    ids = sorted(key.split(":", 2)[2] for key in state if key.startswith("registry:provider:"))
    expected["registry:status:offline"] = ("zset", [(i, 0.0) for i in ids])
    expected["registry:counts"] = ("hash", {field: str(n) for field, n in counts.items() if n})
    return expected


def test_restore_rebuilds_every_key_of_the_registry_as_it_was_with_every_provider_offline(
    registry: Registry, providers: Providers, client, redis_db: redis.Redis, database_url: str
) -> None:
    ids = register_a_varied_registry(providers)
    ids += [providers.register(name=f"same-{i}")["id"] for i in range(3)]  # a shared shape
    assert client.post("/providers/claim", json={"count": 1, "claimant": "s"}).status_code == 200
    take_snapshot(registry.store, database_url)
    # Lease deadlines are capped at the restore's clock; read it before, compare after.
    before = {k: v for k, v in full_state(redis_db).items() if not k.startswith("registry:lock:")}
    redis_db.flushall()

    restore(registry.store, database_url)

    after = full_state(redis_db)
    now_ms = registry.store.now_ms()
    for key, (kind, value) in after.items():
        if key.startswith("registry:provider:"):
            assert int(value["lease_expires_at"]) <= now_ms
            value["lease_expires_at"] = str(min(int(before[key][1]["lease_expires_at"]), now_ms))
    assert after == offline_copy(before, now_ms)


def test_restore_loads_its_script_again_when_redis_lost_the_script_cache(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    ids = [providers.register(name=f"rig-{i}")["id"] for i in range(3)]
    take_snapshot(registry.store, database_url)
    redis_db.flushall()
    redis_db.script_flush()  # as after a restart of a Redis without persistence

    result = restore(registry.store, database_url)

    assert result.restored == 3
    assert sorted(registry.store.provider_ids()) == sorted(ids)


def test_restore_batches_beyond_the_scripts_limit_are_refused_before_reaching_redis(registry: Registry) -> None:
    from app.store.restore import MAX_RESTORE_BATCH

    hashes = [(f"p{i}", {"status": "idle"}) for i in range(MAX_RESTORE_BATCH + 1)]
    with pytest.raises(ValueError):
        registry.store.restore_batch(hashes, registry.store.now_ms())
