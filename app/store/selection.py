"""Selection: the filter arguments of select.lua (shared by queries and claims) and the query.

A query takes two round trips: query.lua selects, counts and pages the providers and returns
their IDs, then one pipelined HMGET per provider reads the fields an answer shows. Inside a
script, every byte a command returns is copied into Lua and out again (about 2 ns a byte:
half of a page's Redis time when the script read the hashes itself); a pipelined HMGET
writes the stored text straight to the socket. Each row is read whole by its HMGET; a
provider deleted between the two steps is left out of the page (its cursor still follows
the selection), and one that changed shows as it is now.
"""
from __future__ import annotations

from typing import Any

from redis.cluster import RedisCluster

from ..models import Filters, Page, Provider
from .keys import STATUSES, Keys, canonical_name, fold_name
from . import wire
from .scripts import wrap_errors

# The hash fields an answer shows (Provider.from_hash); `gpus` is a hash not yet migrated.
PAGE_FIELDS = (
    "owner_id", "name", "hostname", "ip_address", "location", "status", "gpu_specs", "gpu_live",
    "gpus", "metadata", "registered_at", "last_seen_at", "lease_expires_at", "version",
    "claim_id", "claimant", "claim_expires_at", "claim_confirmed", "grace_until",
)
_STATUS = PAGE_FIELDS.index("status")  # every provider has one: None, the provider is gone
# HMGET <key> <PAGE_FIELDS> in the Redis protocol, around the key: packed once, the fields
# cost a page nothing (hiredis.pack_command of each whole row's command: 1.3 µs more a row).
_HMGET = b"*%d\r\n" % (len(PAGE_FIELDS) + 2) + wire.bulk(b"HMGET")
_FIELDS = b"".join(wire.bulk(name.encode()) for name in PAGE_FIELDS)


def filter_keys(keys: Keys, filters: Filters) -> list[str]:
    """Return the filter KEYS of select.lua for `filters`."""
    by_model = filters.gpu_model or filters.gpu_model_exact
    any_gpu = not by_model and (filters.min_vram or filters.min_gpus > 1)
    scratch = [keys.tmp(f"select:{i}") for i in range(3 + len(STATUSES))]
    return [
        keys.gpu_any(filters.min_gpus) if any_gpu else keys.no_key,
        keys.location(filters.location) if filters.location else keys.no_key,
        *scratch,
    ]


def filter_args(filters: Filters) -> list[Any]:
    """Return the filter ARGV of select.lua for `filters`.

    Substrings are matched against folded names, exact names as canonical ones.
    """
    def folded(name: str | None) -> str:
        return fold_name(name) if name else ""

    def canonical(name: str | None) -> str:
        return canonical_name(name) if name else ""

    return [
        ",".join(filters.statuses), filters.min_vram or 0, filters.min_gpus,
        folded(filters.gpu_model), canonical(filters.gpu_model_exact),
        folded(filters.architecture), canonical(filters.architecture_exact),
        "1" if filters.healthy_only else "0",
        filters.sort, "1" if filters.descending else "0",
    ]


class QueryMixin:
    """The provider store's paged query (query.lua over select.lua)."""

    keys: Keys
    _query: Any
    run_script: Any
    redis: Any
    replicas: Any

    def filter_keys(self, filters: Filters) -> list[str]:
        """Return the filter KEYS of select.lua for `filters` (see `filter_keys`)."""
        return filter_keys(self.keys, filters)

    @staticmethod
    def filter_args(filters: Filters) -> list[Any]:
        """Return the filter ARGV of select.lua for `filters` (see `filter_args`)."""
        return filter_args(filters)

    @wrap_errors
    def query(self, filters: Filters, limit: int, cursor: tuple[str, int | None] | None = None) -> Page:
        """Return the page after `cursor` of providers that match `filters`.

        The order is ascending ID, or the sort of `filters` with ties broken by ID; `cursor`
        is the (ID, sort value) of the last provider of the previous page.
        """
        cursor_id, cursor_value = cursor if cursor else ("", None)
        now, total, has_more, *flat = self.run_script(
            self._query,
            self.filter_keys(filters),
            [*self.filter_args(filters), limit, cursor_id, "" if cursor_value is None else cursor_value],
            read_only=True,
        )
        ids = flat[::2]
        providers = self.read_providers(ids)
        next_cursor = None
        if has_more and ids:
            last_id, last_value = flat[-2:]
            next_cursor = (last_id, int(float(last_value)) if filters.sort else None)
        return Page(providers=providers, total=total, next_cursor=next_cursor, now_ms=now)

    def read_providers(self, provider_ids: list[str]) -> list[Provider]:
        """Read providers by ID in one round trip, in order; those gone are left out.

        From the replicas when reads go there (as the query's script did).
        """
        if not provider_ids:
            return []
        client = self.replicas.reader or self.redis
        prefix = self.keys.provider_prefix.encode()
        if isinstance(client, RedisCluster):
            pipe = client.pipeline(transaction=False)
            for provider_id in provider_ids:
                pipe.hmget(self.keys.provider(provider_id), PAGE_FIELDS)
            rows = pipe.execute()
        else:
            packed = b"".join(_HMGET + wire.bulk(prefix + pid.encode()) + _FIELDS for pid in provider_ids)
            rows = wire.replies(client, packed, len(provider_ids))
        providers = []
        for provider_id, values in zip(provider_ids, rows):
            if values[_STATUS] is not None:
                fields = dict(zip(PAGE_FIELDS, values))
                fields["id"] = provider_id
                providers.append(Provider.from_hash(fields))
        return providers
