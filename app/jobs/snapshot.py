"""The periodic snapshot: once per interval across every instance that shares the Redis.

Only the leader (see leader.py) snapshots: it wakes every `snapshot_interval_s` and takes the
snapshot lock, which also keeps a manual `provider-registry snapshot` or `restore` out; a new
leader finding the latest snapshot younger than the interval skips its turn. Restoring after
Redis lost its data is the data watch's (datawatch.py), which does not wait for an interval.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..config import Settings
from ..errors import StoreUnavailable
from ..metrics import snapshot_taken
from ..store import ProviderStore
from .sweeper import always

log = logging.getLogger(__name__)

# An instance skips the snapshot when another took one less than this share of the interval ago.
DUE_SHARE = 0.9
# How soon a process that became the leader notices it has snapshots to take.
LEADER_CHECK_S = 1.0


class SnapshotJob:
    """Snapshot every `snapshot_interval_s` until stopped; each failure is one log line."""

    def __init__(
        self, store: ProviderStore, settings: Settings, leading: Callable[[], bool] = always
    ) -> None:
        self.store = store
        self.settings = settings
        self.leading = leading
        self._stop = threading.Event()

    def run_once(self) -> None:
        """Snapshot if due; log the outcome."""
        from ..snapshot import LockBusy, SnapshotError, take_snapshot

        try:
            taken = take_snapshot(
                self.store, self.settings.database_url,
                retention_days=self.settings.snapshot_retention_days,
                due_after_s=self.settings.snapshot_interval_s * DUE_SHARE,
            )
            if taken is not None:
                snapshot_taken(taken.duration_s)
                log.info(taken.summary(), extra={"snapshot_id": taken.snapshot_id, "providers": taken.providers})
        except LockBusy:
            log.debug("snapshot skipped: another instance holds the lock")
        except SnapshotError as exc:
            log.warning(str(exc))
        except StoreUnavailable as exc:
            log.warning(f"snapshot failed: Redis unavailable: {exc.message}")
        except Exception:  # the loop must outlive a bug: the next interval tries again
            log.exception("snapshot failed unexpectedly")

    def run(self) -> None:
        """Loop until `stop()`: a first run at start, then one per interval."""
        try:
            import psycopg  # noqa: F401
        except ImportError:
            log.error("snapshots need psycopg: install provider-registry[snapshot]")
            return
        # A process that becomes the leader snapshots at once (skipped when the latest is
        # recent), then once per interval while it leads.
        next_at = 0.0
        while not self._stop.is_set():
            if not self.leading():
                next_at = 0.0
            elif time.monotonic() >= next_at:
                self.run_once()
                next_at = time.monotonic() + self.settings.snapshot_interval_s
            self._stop.wait(min(LEADER_CHECK_S, self.settings.snapshot_interval_s))

    def stop(self) -> None:
        """Ask the loop to end after the current run."""
        self._stop.set()
