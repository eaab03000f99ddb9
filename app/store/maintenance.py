"""Maintenance of the whole registry: the sweep, the pulse, the clock, generation and wipe."""
from __future__ import annotations

from typing import Any

import redis

from ..models import Transition
from .keys import Keys
from .scripts import wrap_errors


def ms(time_reply: tuple[int, int]) -> int:
    """Turn a Redis TIME reply (seconds, microseconds) into milliseconds."""
    seconds, micros = time_reply
    return seconds * 1000 + micros // 1000


class MaintenanceMixin:
    """The provider store's registry-wide operations (used by the jobs and the snapshots)."""

    redis: redis.Redis
    keys: Keys
    _pulse: Any
    _sweep: Any
    run_script: Any

    @wrap_errors
    def pulse(self) -> int:
        """Tell the registry that this process reaches Redis now; return Redis's time in ms."""
        return self.run_script(self._pulse, [], [])

    @wrap_errors
    def sweep(self, batch: int = 1000) -> tuple[list[Transition], bool]:
        """Settle up to `batch` lapsed leases and claims.

        Returns:
            The status transitions made, and whether more lapsed entries may be waiting.
        """
        now, found, *flat = self.run_script(self._sweep, [], [batch])
        transitions = [
            Transition(provider_id=flat[i], previous_status=flat[i + 1], status=flat[i + 2])
            for i in range(0, len(flat), 3)
        ]
        return transitions, found >= batch

    @wrap_errors
    def ping(self, client: redis.Redis | None = None) -> None:
        """Check that Redis answers, on `client` (one with tighter timeouts) or the store's own."""
        (client or self.redis).ping()

    @wrap_errors
    def now_ms(self) -> int:
        """Return Redis server time in ms, the registry's one clock."""
        return ms(self.redis.time())

    @wrap_errors
    def count(self) -> int:
        """Return how many providers are registered."""
        return self.redis.zcard(self.keys.providers)

    @wrap_errors
    def provider_ids(self) -> list[str]:
        """Return the ID of every registered provider, in ID order."""
        return self.redis.zrange(self.keys.providers, 0, -1)

    @wrap_errors
    def generation(self) -> str | None:
        """Return the data set's generation marker, or None when Redis has none."""
        return self.redis.get(self.keys.generation)

    @wrap_errors
    def set_generation(self, generation: str, pipeline: Any = None) -> None:
        """Set the data set's generation marker (queued on `pipeline` when given)."""
        conn = pipeline if pipeline is not None else self.redis
        conn.set(self.keys.generation, generation)

    @wrap_errors
    def wipe(self, keep: tuple[str, ...] = ()) -> int:
        """Delete every key of this registry except `keep`; return how many were deleted."""
        deleted = 0
        batch: list[str] = []
        for key in self.redis.scan_iter(match=self.keys.pattern(), count=1000):
            if key not in keep:
                batch.append(key)
            if len(batch) >= 1000:
                deleted += self.redis.unlink(*batch)
                batch = []
        if batch:
            deleted += self.redis.unlink(*batch)
        return deleted
