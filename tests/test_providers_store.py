"""The provider store's public writes queued on a caller's pipeline (as rq's registries take one)."""
from __future__ import annotations

import pytest

from app.errors import ProviderNotFound

from .conftest import gpu, new_id, provider_body


def details() -> dict:
    body = provider_body(gpus=[gpu(architecture="ampere")])
    return body


def test_register_on_a_pipeline_writes_nothing_until_it_is_executed(registry):
    store = registry.store
    first, second = new_id(), new_id()
    pipe = store.redis.pipeline(transaction=False)
    assert store.register(first, details(), "idle", pipeline=pipe) is None
    assert store.register(second, details(), "idle", pipeline=pipe) is None
    assert store.count() == 0
    pipe.execute()
    assert sorted(store.provider_ids()) == sorted([first, second])
    assert store.get(first)[0].status == "idle"


def test_heartbeat_update_rotate_and_delete_on_one_pipeline(registry):
    store = registry.store
    provider_id = new_id()
    store.register(provider_id, details(), "idle")
    changed = {**details(), "name": "rig-2"}
    pipe = store.redis.pipeline(transaction=False)
    assert store.heartbeat(provider_id, "busy", pipeline=pipe) is None
    assert store.update(provider_id, changed, pipeline=pipe) is None
    assert store.rotate_token(provider_id, "b" * 64, pipeline=pipe) is None
    pipe.execute()
    provider, _ = store.get(provider_id)
    assert (provider.status, provider.name) == ("busy", "rig-2")
    assert store.token_matches(provider_id, "b" * 64)
    pipe = store.redis.pipeline(transaction=False)
    store.delete(provider_id, pipeline=pipe)
    store.set_generation("g-1", pipeline=pipe)
    pipe.execute()
    with pytest.raises(ProviderNotFound):
        store.get(provider_id)
    assert store.generation() == "g-1"
