"""The snapshot: the `providers` table kept equal to Redis, the history of counts, the guards."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import redis

from app.registry import Registry
from app.snapshot import DatabaseUnavailable, LockBusy, SnapshotRefused, take_snapshot
from app.snapshot.database import migrations
from app.store.lock import LeaseLock

from .conftest import Providers, gpu, sql
from .redis_server import free_port


def ms(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def test_first_snapshot_creates_the_schema_and_records_its_version(registry: Registry, database_url: str) -> None:
    take_snapshot(registry.store, database_url)

    versions = sql(database_url, "SELECT version FROM schema_version ORDER BY version")
    assert [v for (v,) in versions] == [version for version, _, _ in migrations()]
    assert versions[0] == (1,)


def test_snapshot_of_an_empty_registry_records_zero_providers(registry: Registry, database_url: str) -> None:
    result = take_snapshot(registry.store, database_url)

    assert result is not None and (result.providers, result.gpus) == (0, 0)
    assert sql(database_url, "SELECT count(*) FROM providers") == [(0,)]
    assert sql(database_url, "SELECT providers, gpus FROM snapshots") == [(0, 0)]
    assert sql(database_url, "SELECT count(*) FROM snapshot_counts") == [(0,)]


def test_snapshot_of_a_full_registry_has_one_row_per_provider_with_its_details(
    registry: Registry, providers: Providers, database_url: str
) -> None:
    shown = [
        providers.register(name=f"rig-{i}", metadata={"rack": f"r{i}", "tags": ["a", i]})
        for i in range(5)
    ]
    providers.heartbeat(shown[0]["id"], status="busy")
    busy = providers.get(shown[0]["id"])

    result = take_snapshot(registry.store, database_url)

    assert result is not None and (result.providers, result.gpus, result.added) == (5, 5, 5)
    rows = sql(
        database_url,
        "SELECT id, owner_id, name, hostname, ip_address, location, status, gpu_count, gpus,"
        " metadata, registered_at, last_seen_at, lease_expires_at FROM providers ORDER BY name",
    )
    assert len(rows) == 5
    for row, provider in zip(rows, [busy, *shown[1:]]):
        assert row[:8] == (
            provider["id"], provider["owner_id"], provider["name"], provider["hostname"],
            provider["ip_address"], provider["location"], provider["status"], 1,
        )
        assert row[8] == provider["gpus"] and row[9] == provider["metadata"]
        assert row[10:] == (
            ms(provider["registered_at"]), ms(provider["last_seen_at"]), ms(provider["lease_expires_at"])
        )
    assert rows[0][6] == "busy"


def test_redis_hash_column_keeps_every_field_of_the_hash(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    provider_id = providers.register()["id"]
    redis_db.hset(f"registry:provider:{provider_id}", mapping={"version": "3", "token_hash": "ab12"})

    take_snapshot(registry.store, database_url)

    (raw,), = sql(database_url, "SELECT redis_hash FROM providers")
    assert json.loads(raw) == redis_db.hgetall(f"registry:provider:{provider_id}")


def test_snapshot_applies_additions_changes_and_deletions_since_the_last(
    registry: Registry, providers: Providers, client, database_url: str
) -> None:
    kept, changed, deleted = (providers.register(name=n)["id"] for n in ("kept", "changed", "deleted"))
    take_snapshot(registry.store, database_url)
    (kept_at,), = sql(database_url, "SELECT snapshot_at FROM providers WHERE id = %s", (kept,))

    providers.heartbeat(changed, status="maintenance")
    assert client.delete(f"/providers/{deleted}").status_code == 204
    added = providers.register(name="added")["id"]
    result = take_snapshot(registry.store, database_url)

    assert result is not None
    assert (result.added, result.changed, result.removed, result.providers) == (1, 1, 1, 3)
    rows = dict(sql(database_url, "SELECT id, status FROM providers"))
    assert rows == {kept: "idle", changed: "maintenance", added: "idle"}
    assert sql(database_url, "SELECT snapshot_at FROM providers WHERE id = %s", (kept,)) == [(kept_at,)]
    assert sql(database_url, "SELECT added, changed, removed FROM snapshots ORDER BY id") == [
        (3, 0, 0), (1, 1, 1),
    ]


def test_snapshot_shows_a_lapsed_lease_as_offline(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    provider_id = providers.register()["id"]
    # The lease lapsed but the sweeper has not run: the stored status still says idle.
    redis_db.hset(f"registry:provider:{provider_id}", "lease_expires_at", "1000")

    take_snapshot(registry.store, database_url)

    assert sql(database_url, "SELECT status FROM providers") == [("offline",)]


def test_snapshot_counts_providers_and_gpus_by_status_and_model(
    registry: Registry, providers: Providers, database_url: str
) -> None:
    two_a100 = providers.register(gpus=[gpu("NVIDIA A100"), gpu("nvidia  a100")])["id"]
    providers.register(gpus=[gpu("NVIDIA A100"), gpu("RTX 4090", 24576)])
    providers.heartbeat(two_a100, status="busy")

    result = take_snapshot(registry.store, database_url)

    assert result is not None
    counts = sql(
        database_url,
        "SELECT status, gpu_model, providers, gpus FROM snapshot_counts WHERE snapshot_id = %s"
        " ORDER BY status, gpu_model NULLS FIRST",
        (result.snapshot_id,),
    )
    assert counts == [
        ("busy", None, 1, 2),
        ("busy", "nvidia a100", 1, 2),
        ("idle", None, 1, 2),
        ("idle", "nvidia a100", 1, 1),
        ("idle", "rtx 4090", 1, 1),
    ]


def test_retention_deletes_history_older_than_the_setting_but_never_the_latest(
    registry: Registry, database_url: str
) -> None:
    take_snapshot(registry.store, database_url)
    sql(database_url, "UPDATE snapshots SET taken_at = taken_at - interval '40 days'")
    take_snapshot(registry.store, database_url, retention_days=30)
    assert sql(database_url, "SELECT count(*) FROM snapshots") == [(1,)]

    sql(database_url, "UPDATE snapshots SET taken_at = taken_at - interval '40 days'")
    take_snapshot(registry.store, database_url, retention_days=0)
    assert sql(database_url, "SELECT count(*) FROM snapshots") == [(2,)]


def test_snapshot_refuses_after_redis_lost_its_data(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    for i in range(3):
        providers.register(name=f"rig-{i}")
    take_snapshot(registry.store, database_url)
    redis_db.flushall()
    providers.register(name="re-registered")

    with pytest.raises(SnapshotRefused, match="Redis lost its data"):
        take_snapshot(registry.store, database_url)

    assert sql(database_url, "SELECT count(*) FROM providers") == [(3,)]
    assert sql(database_url, "SELECT count(*) FROM snapshots") == [(1,)]


def test_snapshot_refuses_a_redis_of_another_generation(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    providers.register()
    take_snapshot(registry.store, database_url)
    redis_db.set("registry:generation", "someone-else")

    with pytest.raises(SnapshotRefused):
        take_snapshot(registry.store, database_url)


def test_forced_snapshot_overwrites_the_table_and_records_the_new_generation(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    providers.register(name="old")
    first = take_snapshot(registry.store, database_url)
    redis_db.flushall()
    new = providers.register(name="new")["id"]

    forced = take_snapshot(registry.store, database_url, force=True)

    assert first is not None and forced is not None
    assert forced.forced and forced.generation != first.generation
    assert redis_db.get("registry:generation") == forced.generation
    assert sql(database_url, "SELECT id FROM providers") == [(new,)]
    # From now on the periodic snapshot accepts this Redis again.
    assert take_snapshot(registry.store, database_url) is not None


def test_first_snapshot_writes_the_generation_marker(registry: Registry, redis_db: redis.Redis, database_url: str) -> None:
    result = take_snapshot(registry.store, database_url)

    assert result is not None
    assert redis_db.get("registry:generation") == result.generation
    assert sql(database_url, "SELECT generation FROM snapshots") == [(result.generation,)]


def test_snapshot_is_skipped_when_the_latest_is_younger_than_due_after(
    registry: Registry, database_url: str
) -> None:
    assert take_snapshot(registry.store, database_url, due_after_s=60) is not None
    assert take_snapshot(registry.store, database_url, due_after_s=60) is None
    assert sql(database_url, "SELECT count(*) FROM snapshots") == [(1,)]


def test_snapshot_fails_with_database_unavailable_when_postgresql_is_unreachable(
    registry: Registry, redis_db: redis.Redis
) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/registry"

    with pytest.raises(DatabaseUnavailable, match="PostgreSQL unreachable at postgresql://postgres@127.0.0.1"):
        take_snapshot(registry.store, closed)

    assert redis_db.get("registry:lock:snapshot") is None  # released on the way out


def test_snapshot_waits_its_turn_while_another_instance_holds_the_lock(
    registry: Registry, redis_db: redis.Redis, database_url: str
) -> None:
    other = LeaseLock(redis_db, "registry:lock:snapshot", lease_s=5)
    assert other.acquire()
    try:
        with pytest.raises(LockBusy):
            take_snapshot(registry.store, database_url)
    finally:
        other.release()

    assert take_snapshot(registry.store, database_url) is not None
    assert redis_db.get("registry:lock:snapshot") is None


def test_a_lock_left_by_a_dead_instance_frees_itself_when_its_lease_lapses(
    registry: Registry, redis_db: redis.Redis, database_url: str
) -> None:
    # What a killed instance leaves: its token under a lease nobody renews.
    redis_db.set("registry:lock:snapshot", "dead-instance", px=300)
    with pytest.raises(LockBusy):
        take_snapshot(registry.store, database_url)

    from .conftest import wait_until

    assert wait_until(lambda: redis_db.get("registry:lock:snapshot") is None, timeout=5)
    assert take_snapshot(registry.store, database_url) is not None


def test_ids_reach_postgresql_as_one_array_literal_whatever_characters_they_hold(database_url: str) -> None:
    from app.snapshot.snapshot import text_array

    ids = ["a", 'quote"d', "back\\slash", "com,ma", "{brace}", " spaced ", "NULL", ""]

    assert sql(database_url, "SELECT %s::text[]", (text_array(ids),)) == [(ids,)]


def test_snapshot_reads_through_connections_that_redis_closed_meanwhile(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    for i in range(3):
        providers.register(name=f"rig-{i}")
    take_snapshot(registry.store, database_url)
    redis_db.client_kill_filter(_type="normal", skipme=True)  # as a restarted Redis would

    result = take_snapshot(registry.store, database_url)

    assert result is not None and result.providers == 3
