"""The periodic snapshot: once per interval across every instance that shares the Redis.

Each instance wakes every `snapshot_interval_s`; the first to take the lock snapshots, the
others find the latest snapshot recent and skip. With `restore_on_empty`, an instance that
finds the registry's keys absent restores the latest snapshot first.
"""
from __future__ import annotations

import logging
import threading

from ..config import Settings
from ..errors import StoreUnavailable
from ..store import ProviderStore

log = logging.getLogger(__name__)

# An instance skips the snapshot when another took one less than this share of the interval ago.
DUE_SHARE = 0.9


class SnapshotJob:
    """Snapshot every `snapshot_interval_s` until stopped; each failure is one log line."""

    def __init__(self, store: ProviderStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._stop = threading.Event()

    def run_once(self) -> None:
        """Restore if asked and Redis is empty, else snapshot if due; log the outcome."""
        from ..snapshot import (
            LockBusy, NothingToRestore, RestoreRefused, SnapshotError, restore, take_snapshot,
        )

        url = self.settings.database_url
        try:
            if self.settings.restore_on_empty and self._registry_absent():
                try:
                    result = restore(self.store, url)
                    log.info(result.summary(), extra={"restored": result.restored})
                    return
                except NothingToRestore:
                    pass  # a first start: the snapshot below records the first data set
                except RestoreRefused:
                    pass  # another instance restored first, or providers registered meanwhile
            taken = take_snapshot(
                self.store, url,
                retention_days=self.settings.snapshot_retention_days,
                due_after_s=self.settings.snapshot_interval_s * DUE_SHARE,
            )
            if taken is not None:
                log.info(taken.summary(), extra={"snapshot_id": taken.snapshot_id, "providers": taken.providers})
        except LockBusy:
            log.debug("snapshot skipped: another instance holds the lock")
        except SnapshotError as exc:
            log.warning(str(exc))
        except StoreUnavailable as exc:
            log.warning(f"snapshot failed: Redis unavailable: {exc.message}")
        except Exception:  # the loop must outlive a bug: the next interval tries again
            log.exception("snapshot failed unexpectedly")

    def _registry_absent(self) -> bool:
        return self.store.generation() is None and self.store.count() == 0

    def run(self) -> None:
        """Loop until `stop()`: a first run at start, then one per interval."""
        try:
            import psycopg  # noqa: F401
        except ImportError:
            log.error("snapshots need psycopg: install provider-registry[snapshot]")
            return
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.settings.snapshot_interval_s)

    def stop(self) -> None:
        """Ask the loop to end after the current run."""
        self._stop.set()
