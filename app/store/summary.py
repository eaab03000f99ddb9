"""Capacity at a glance, from counters the writes keep (see summary.lua)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from .keys import STATUSES
from ..rules import IDLE, parse_counter_field
from .providers import ProviderStore
from .scripts import load_script, wrap_errors


class CapacityStore:
    """Summaries by effective status, GPU model and location, without reading every provider."""

    def __init__(self, providers: ProviderStore) -> None:
        self.providers = providers
        self._summary = load_script(providers.redis, "summary")

    @wrap_errors
    def summary(self) -> dict[str, Any]:
        """Return providers by status, GPUs and VRAM by model, providers and GPUs by location."""
        _, in_grace, *flat = self.providers.run_script(self._summary, [], [], read_only=True)
        by_status = {status: 0 for status in STATUSES}
        models: dict[str, dict[str, int]] = defaultdict(
            lambda: {"providers": 0, "gpus": 0, "idle_gpus": 0, "vram_mb": 0, "idle_vram_mb": 0}
        )
        locations: dict[str, dict[str, int]] = defaultdict(
            lambda: {"providers": 0, "idle_providers": 0, "gpus": 0, "idle_gpus": 0}
        )
        for field, value in zip(flat[::2], flat[1::2]):
            status, kind, name = parse_counter_field(field)
            idle = status == IDLE
            if kind == "n":
                by_status[status] = by_status.get(status, 0) + value
            elif kind == "mp":
                models[name]["providers"] += value
            elif kind == "mg":
                models[name]["gpus"] += value
                models[name]["idle_gpus"] += value if idle else 0
            elif kind == "mv":
                models[name]["vram_mb"] += value
                models[name]["idle_vram_mb"] += value if idle else 0
            elif kind == "lp":
                locations[name]["providers"] += value
                locations[name]["idle_providers"] += value if idle else 0
            elif kind == "lg":
                locations[name]["gpus"] += value
                locations[name]["idle_gpus"] += value if idle else 0
        return {
            "by_status": by_status,
            "in_grace": in_grace,
            "by_gpu_model": dict(sorted(models.items())),
            "by_location": dict(sorted(locations.items())),
        }

    @wrap_errors
    def sweeper_lag_s(self) -> float:
        """Return how long ago the earliest lease deadline still in the leases index passed.

        The sweeper removes a lease from the index once it settles it: an entry past its
        deadline is a lapse the sweeper has not handled yet. 0 when none is waiting.
        """
        pipe = self.providers.redis.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(self.providers.keys.leases, 0, 0, withscores=True)
        (seconds, micros), oldest = pipe.execute()
        if not oldest:
            return 0.0
        now_ms = seconds * 1000 + micros // 1000
        return max(0.0, (now_ms - oldest[0][1]) / 1000)
