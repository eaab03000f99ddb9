"""The lease lock: one holder at a time, renewed while held, never released for another."""
from __future__ import annotations

import time

import redis

from app.store.lock import LeaseLock

from .conftest import wait_until

KEY = "registry:lock:test"


def test_only_one_holder_at_a_time(redis_db: redis.Redis) -> None:
    first, second = LeaseLock(redis_db, KEY, 5), LeaseLock(redis_db, KEY, 5)

    assert first.acquire()
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()
    assert redis_db.get(KEY) is None


def test_the_lease_is_renewed_while_the_lock_is_held(redis_db: redis.Redis) -> None:
    with LeaseLock(redis_db, KEY, lease_s=0.3) as lock:
        assert lock.acquire()
        time.sleep(1.0)  # over three leases
        assert lock.held()
        assert redis_db.get(KEY) == lock.token
        assert 0 < redis_db.pttl(KEY) <= 300
    assert redis_db.get(KEY) is None


def test_a_holder_whose_lock_was_taken_over_knows_it_and_leaves_the_new_holder_alone(
    redis_db: redis.Redis,
) -> None:
    lock = LeaseLock(redis_db, KEY, lease_s=0.3)
    assert lock.acquire()
    # As if this holder froze past its lease and another instance took the lock.
    redis_db.set(KEY, "another-holder", px=5000)

    assert wait_until(lambda: not lock.held(), timeout=5)
    lock.release()
    assert redis_db.get(KEY) == "another-holder"
