"""A page is selected by one script, then its rows are read by one HMGET each in one write.

What an API user sees of those two steps: a provider that goes away in between is left out
and the walk still neither skips nor repeats anyone; the rows show each provider whole; a
restarted Redis costs no page an error; a failure mid-read leaves no half-read connection.
"""
from __future__ import annotations

from typing import Any

import hiredis
import pytest
import redis

from app.models import Filters
from app.registry import Registry
from app.store import wire

from .conftest import Providers


def test_a_provider_deleted_between_selection_and_read_is_left_out_and_the_walk_goes_on(
    registry: Registry, providers: Providers, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = sorted(providers.register(name=f"rig-{i}")["id"] for i in range(5))
    store = registry.store
    read = store.read_providers

    def read_after_a_delete(provider_ids: list[str]) -> Any:
        if ids[1] in provider_ids:
            store.delete(ids[1])
        return read(provider_ids)

    monkeypatch.setattr(store, "read_providers", read_after_a_delete)
    first = store.query(Filters(), 2)
    assert [p.id for p in first.providers] == [ids[0]]  # one row fewer than the limit
    assert first.next_cursor == (ids[1], None)  # the selection's last ID: nothing skipped
    second = store.query(Filters(), 2, first.next_cursor)
    assert [p.id for p in second.providers] == ids[2:4]


def test_a_page_shows_each_provider_as_its_hash_holds_it_now(
    registry: Registry, providers: Providers, client: Any
) -> None:
    body = providers.register(metadata={"rack": "r1", "nested": {"a": [1, 2]}})
    [row] = client.get("/providers?limit=10").get_json()
    assert row == client.get(f"/providers/{body['id']}").get_json()
    assert row["metadata"] == {"rack": "r1", "nested": {"a": [1, 2]}}


def test_read_providers_keeps_the_order_asked_and_skips_unknown_ids(registry: Registry, providers: Providers) -> None:
    ids = [providers.register(name=f"rig-{i}")["id"] for i in range(3)]
    asked = [ids[2], "00000000-0000-4000-8000-000000000000", ids[0]]
    assert [p.id for p in registry.store.read_providers(asked)] == [ids[2], ids[0]]
    assert registry.store.read_providers([]) == []


def test_bulk_reads_after_redis_restarted_go_out_on_a_new_connection(
    registry: Registry, providers: Providers, client: Any, redis_server: Any
) -> None:
    providers.register()
    assert len(client.get("/providers?limit=10").get_json()) == 1  # pooled connections in use
    redis_server.stop()
    redis_server.start()
    assert wire.replies(registry.store.redis, hiredis.pack_command(("ECHO", "back")), 1) == ["back"]
    providers.register()
    assert len(client.get("/providers?limit=10").get_json()) == 1


def test_a_read_that_fails_midway_does_not_leave_its_replies_to_the_next_read(registry: Registry) -> None:
    client = registry.store.redis
    with pytest.raises(redis.ResponseError):
        # The second command fails with one reply still unread: that connection must close.
        packed = b"".join(hiredis.pack_command(c) for c in (("ECHO", "1"), ("NOSUCHCOMMAND",), ("ECHO", "3")))
        wire.replies(client, packed, 3)
    assert wire.replies(client, hiredis.pack_command(("ECHO", "next")), 1) == ["next"]
