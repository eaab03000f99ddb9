"""Whether Redis still holds the data set the snapshots hold: what /health reports as `data`."""
from __future__ import annotations

import redis

from .keys import Keys
from .scripts import wrap_errors

# `data` in /health. ok: Redis holds the generation marker (or nothing tracks it: no
# database_url). restoring: the marker is gone and the leader is restoring the latest
# snapshot. lost: the marker is gone and nothing restores it (restore_on_empty off, or the
# restore failed); the very first snapshot of a new registry also writes it.
DATA_STATES = ("ok", "restoring", "lost")


class DataSet:
    """The generation marker and the restoring flag of one registry."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    @wrap_errors
    def state(self, client: redis.Redis, tracked: bool = True) -> str:
        """Return `ok`, `restoring` or `lost` in one round trip (which also proves Redis answers)."""
        if not tracked:
            client.ping()
            return "ok"
        generation, restoring = client.mget(self.keys.generation, self.keys.restoring)
        if generation is not None:
            return "ok"
        return "restoring" if restoring is not None else "lost"

    @wrap_errors
    def marker_present(self, client: redis.Redis) -> bool:
        """Return whether the generation marker is there: the leader's cheap, frequent check."""
        return bool(client.exists(self.keys.generation))

    @wrap_errors
    def mark_restoring(self, client: redis.Redis, holder: str, ttl_s: float) -> None:
        """Say that a restore runs, for at most `ttl_s` (a leader that dies mid-way says no more)."""
        client.set(self.keys.restoring, holder, px=int(ttl_s * 1000))

    @wrap_errors
    def clear_restoring(self, client: redis.Redis) -> None:
        """Say that no restore runs any more."""
        client.delete(self.keys.restoring)
