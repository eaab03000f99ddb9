"""The data watch: notice within seconds that Redis lost its data, and restore at once.

Redis may run without persistence: restarted, it comes back empty, and daemons re-register
the providers they run while the others are simply gone. The generation marker (written by
the first snapshot and by every restore) is how the registry tells: the leader checks it every
few seconds with one EXISTS, and with `restore_on_empty` restores the latest snapshot, merged
with what re-registered meanwhile (the newer `last_seen_at` wins), rather than at the next
snapshot interval.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..config import Settings
from ..errors import StoreUnavailable
from ..store import ProviderStore
from ..store.dataset import DataSet
from .sweeper import always

log = logging.getLogger(__name__)

# One EXISTS this often costs Redis nothing, and bounds how long a loss goes unnoticed.
CHECK_S = 2.0
# The restoring flag outlives a leader that dies mid-restore by at most this long; a restore of
# 100,000 providers takes about 11 s (docs/PERFORMANCE.md).
RESTORING_FLAG_S = 120.0


class DataWatch:
    """Every `check_s`, while `leading()`: find the marker, or restore (with restore_on_empty)."""

    def __init__(
        self,
        store: ProviderStore,
        settings: Settings,
        leading: Callable[[], bool] = always,
        check_s: float = CHECK_S,
    ) -> None:
        self.store = store
        self.settings = settings
        self.leading = leading
        self.check_s = check_s
        self.dataset = DataSet(store.keys)
        self._said = ""  # the last problem logged, so that a lasting one is one line, not many
        self._stop = threading.Event()

    def check_once(self) -> str:
        """Check the marker and restore if it is gone and that is asked; return the data state."""
        if self.dataset.marker_present(self.store.redis):
            self._said = ""
            return "ok"
        if not self.settings.restore_on_empty:
            self._say_once(
                "Redis lost its data (no generation marker) and restore_on_empty is off: "
                "run `provider-registry restore`"
            )
            return "lost"
        return self._restore()

    def _restore(self) -> str:
        from ..snapshot import LockBusy, NothingToRestore, SnapshotError, restore, take_snapshot

        url = self.settings.database_url
        detected = time.monotonic()
        self.dataset.mark_restoring(self.store.redis, "leader", RESTORING_FLAG_S)
        try:
            try:
                result = restore(self.store, url, merge=True)
            except NothingToRestore:
                # A new registry: its first snapshot writes the first marker.
                taken = take_snapshot(self.store, url, retention_days=self.settings.snapshot_retention_days)
                if taken is not None:
                    log.info(taken.summary(), extra={"snapshot_id": taken.snapshot_id})
                return "ok"
            log.info(
                result.summary(),
                extra={
                    "restored": result.restored, "kept": result.kept,
                    "seconds_after_detection": round(time.monotonic() - detected, 2),
                },
            )
            self._said = ""
            return "ok"
        except LockBusy:
            # A snapshot (refused, as the marker is gone) or a manual restore holds the lock.
            return "restoring"
        except SnapshotError as exc:
            self._say_once(f"Redis lost its data; restoring failed: {exc}")
            return "lost"
        finally:
            try:
                self.dataset.clear_restoring(self.store.redis)
            except StoreUnavailable:
                pass  # the flag's TTL clears it

    def _say_once(self, message: str) -> None:
        if message != self._said:
            log.warning(message)
            self._said = message

    def run(self) -> None:
        """Loop until `stop()`; checks only while this process leads."""
        try:
            import psycopg  # noqa: F401
        except ImportError:
            log.error("restores need psycopg: install provider-registry[snapshot]")
            return
        while not self._stop.wait(self.check_s):
            if not self.leading():
                continue
            try:
                self.check_once()
            except StoreUnavailable:
                pass  # the sweeper and the election already say so, once per outage
            except Exception:  # the loop must outlive a bug: the next check tries again
                log.exception("data watch failed unexpectedly")

    def stop(self) -> None:
        """Ask the loop to end after the current check."""
        self._stop.set()
