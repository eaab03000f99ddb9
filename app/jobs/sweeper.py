"""The lease sweeper: turns lapsed leases into offline transitions and logs each one.

Reads never depend on it (the read path checks deadlines itself); it keeps the status sets
true for operators and keeps the query's lapse correction small.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from ..errors import StoreUnavailable
from ..metrics import swept
from ..models import Transition
from ..store import ProviderStore
from ..store.migrations import migrate

log = logging.getLogger(__name__)


def always() -> bool:
    """Lead alone: for a sweeper that takes part in no election (tests, one-off runs)."""
    return True


class Sweeper:
    """Sweep every `interval_s` seconds, while `leading()` says so, until stopped."""

    def __init__(
        self,
        store: ProviderStore,
        interval_s: float,
        batch: int = 1000,
        leading: Callable[[], bool] = always,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.batch = batch
        self.leading = leading
        self.sweeps = 0  # how many sweeps this process ran: tests and operators see who swept
        self._stop = threading.Event()
        self._outage = False

    def sweep_once(self) -> list[Transition]:
        """Sweep until no lapsed lease or claim is left; return the transitions made."""
        transitions: list[Transition] = []
        while True:
            batch, more = self.store.sweep(self.batch)
            for t in batch:
                reason = "lease lapsed" if t.status == "offline" else "claim lapsed"
                log.info(
                    f"provider {t.status}: {reason}",
                    extra={
                        "provider_id": t.provider_id,
                        "previous_status": t.previous_status,
                        "status": t.status,
                    },
                )
            swept(batch)
            transitions += batch
            if not more:
                return transitions

    def run(self) -> None:
        """Loop until `stop()`; a Redis outage is logged once and retried.

        Its first step brings the store to the current key layout (migrations.py).
        """
        migrated = False
        while not self._stop.is_set():
            if not self.leading():
                self._stop.wait(self.interval_s)
                continue
            try:
                if not migrated:
                    migrate(self.store)
                    migrated = True
                self.sweep_once()
                self.sweeps += 1
                if self._outage:
                    log.info("sweeper: store reachable again")
                self._outage = False
            except StoreUnavailable:
                if not self._outage:
                    log.warning("sweeper: store unavailable, retrying")
                self._outage = True
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        """Ask the loop to end after the current sweep."""
        self._stop.set()
