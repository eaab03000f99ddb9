"""Maintenance: generation marker, wipe and the clock, registry-wide."""
from __future__ import annotations

from .conftest import new_id, provider_body


def test_wipe_deletes_every_registry_key_but_the_kept_ones(registry, redis_db):
    store = registry.store
    store.register(new_id(), provider_body(), "idle")
    store.set_generation("g-1")
    redis_db.set("other:key", "1")
    assert store.wipe(keep=(store.keys.generation,)) > 0
    assert [key for key in redis_db.scan_iter("registry:*")] == [store.keys.generation]
    assert redis_db.get("other:key") == "1"


def test_generation_is_none_until_set_and_can_be_queued_on_a_pipeline(registry):
    store = registry.store
    assert store.generation() is None
    pipe = store.redis.pipeline(transaction=False)
    store.set_generation("g-2", pipeline=pipe)
    assert store.generation() is None
    pipe.execute()
    assert store.generation() == "g-2"


def test_now_is_redis_time_in_ms(registry):
    a = registry.store.now_ms()
    b = registry.store.now_ms()
    assert 1_700_000_000_000 < a <= b
