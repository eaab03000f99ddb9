"""The pulse: each serving process tells Redis, a few times a second, that it reaches it.

When no process has pulsed for `outage_grace_after_s`, the registry was blind: the first
script to run afterwards gives the leases that lapsed meanwhile their outage grace (lib.lua).
Every process pulses, not only the leader, so one instance that cannot reach Redis while
another can is no outage of the registry.
"""
from __future__ import annotations

import threading

from ..errors import StoreUnavailable
from ..store import ProviderStore

# Pulses per grace threshold: a pulse or two may be late without counting as blindness.
PULSES_PER_THRESHOLD = 4


class Pulse:
    """Pulse every `blind_after_s / 4` seconds until stopped."""

    def __init__(self, store: ProviderStore, blind_after_s: float) -> None:
        self.store = store
        self.interval_s = blind_after_s / PULSES_PER_THRESHOLD
        self._stop = threading.Event()

    def run(self) -> None:
        """Loop until `stop()`; an unreachable Redis is the very thing the pulse measures."""
        while not self._stop.is_set():
            try:
                self.store.pulse()
            except StoreUnavailable:
                pass  # the sweeper and /health report outages
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        """Ask the loop to end."""
        self._stop.set()
