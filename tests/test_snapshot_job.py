"""The periodic snapshot inside the service: once across instances, one log line per failure."""
from __future__ import annotations

import dataclasses
import logging
import threading

import pytest
import redis

from app.config import Settings
from app.jobs.background import BackgroundJobs
from app.jobs.datawatch import DataWatch
from app.jobs.snapshot import SnapshotJob
from app.registry import Registry
from app.snapshot import take_snapshot
from app.store.lock import LeaseLock

from .conftest import Providers, sql, wait_until
from .redis_server import free_port


def job_for(registry: Registry, database_url: str, **settings) -> SnapshotJob:
    return SnapshotJob(
        registry.store,
        dataclasses.replace(registry.settings, database_url=database_url, **settings),
    )


def watch_for(registry: Registry, database_url: str, **settings) -> DataWatch:
    return DataWatch(
        registry.store,
        dataclasses.replace(registry.settings, database_url=database_url, **settings),
    )


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_two_instances_take_one_snapshot_per_interval(
    registry: Registry, providers: Providers, database_url: str
) -> None:
    providers.register()
    first, second = (job_for(registry, database_url, snapshot_interval_s=60) for _ in range(2))

    first.run_once()
    second.run_once()

    assert sql(database_url, "SELECT providers FROM snapshots") == [(1,)]


def test_periodic_snapshot_refuses_with_one_log_line_after_redis_was_wiped(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for i in range(2):
        providers.register(name=f"rig-{i}")
    job = job_for(registry, database_url, snapshot_interval_s=0.01)
    job.run_once()
    redis_db.flushall()
    providers.register(name="after-the-wipe")

    caplog.clear()
    with caplog.at_level(logging.INFO):
        job.run_once()

    assert len(warnings_of(caplog)) == 1
    assert "snapshot refused" in warnings_of(caplog)[0]
    assert sql(database_url, "SELECT count(*) FROM providers") == [(2,)]
    assert sql(database_url, "SELECT count(*) FROM snapshots") == [(1,)]


def test_postgresql_down_fails_the_snapshot_with_one_log_line_and_leaves_the_api_alone(
    registry: Registry, providers: Providers, client, caplog: pytest.LogCaptureFixture
) -> None:
    job = job_for(registry, f"postgresql://postgres@127.0.0.1:{free_port()}/registry")

    with caplog.at_level(logging.INFO):
        job.run_once()

    assert len(warnings_of(caplog)) == 1
    assert "PostgreSQL unreachable" in warnings_of(caplog)[0]
    assert client.get("/health").status_code == 200
    provider_id = providers.register()["id"]
    assert providers.heartbeat(provider_id)["status"] == "idle"


def test_a_busy_lock_is_not_a_failure(
    registry: Registry, redis_db: redis.Redis, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    other = LeaseLock(redis_db, "registry:lock:snapshot", lease_s=5)
    assert other.acquire()
    try:
        with caplog.at_level(logging.INFO):
            job_for(registry, database_url).run_once()
    finally:
        other.release()

    assert warnings_of(caplog) == []
    assert sql(database_url, "SELECT to_regclass('snapshots')") == [(None,)]  # not even connected


def test_restore_on_empty_restores_the_latest_snapshot_when_the_registry_keys_are_absent(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    ids = [providers.register(name=f"rig-{i}")["id"] for i in range(3)]
    take_snapshot(registry.store, database_url)
    redis_db.flushall()

    watch_for(registry, database_url, restore_on_empty=True).check_once()

    assert providers.ids("status=offline") == sorted(ids)


def test_without_restore_on_empty_an_empty_registry_stays_empty(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    providers.register()
    take_snapshot(registry.store, database_url)
    redis_db.flushall()

    assert watch_for(registry, database_url, restore_on_empty=False).check_once() == "lost"

    assert providers.ids() == []


def test_restore_on_empty_on_a_first_start_takes_the_first_snapshot(
    registry: Registry, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    providers.register()
    redis_db.delete("registry:providers")  # no providers and no marker, as on a first start
    watch_for(registry, database_url, restore_on_empty=True).check_once()

    assert sql(database_url, "SELECT count(*) FROM snapshots") == [(1,)]


def test_serving_processes_run_the_snapshot_job_and_the_data_watch_when_a_database_is_set(
    registry: Registry, database_url: str
) -> None:
    def kinds(**settings) -> list[str]:
        jobs = BackgroundJobs(dataclasses.replace(registry, settings=dataclasses.replace(registry.settings, **settings)))
        return [type(j).__name__ for j in jobs.jobs]

    assert {"SnapshotJob", "DataWatch"} <= set(kinds(database_url=database_url, snapshot_interval_s=60))
    assert not {"SnapshotJob", "DataWatch"} & set(kinds())
    assert "SnapshotJob" not in kinds(database_url=database_url, snapshot_interval_s=0)
    assert "DataWatch" in kinds(database_url=database_url, snapshot_interval_s=0)


def test_the_job_loop_snapshots_at_start_and_stops_when_asked(
    registry: Registry, database_url: str
) -> None:
    def snapshots() -> int:
        tables = sql(database_url, "SELECT to_regclass('snapshots') IS NOT NULL")
        return sql(database_url, "SELECT count(*) FROM snapshots")[0][0] if tables[0][0] else 0

    job = job_for(registry, database_url, snapshot_interval_s=3600)
    thread = threading.Thread(target=job.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: snapshots() == 1, timeout=10)
    finally:
        job.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
