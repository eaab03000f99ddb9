"""Restore: load the latest snapshot into Redis, every provider offline, every index rebuilt."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timezone
from itertools import islice

import orjson

from ..config import mask_url
from ..store import ProviderStore
from .database import connect
from .errors import LockBusy, LockLost, NothingToRestore, RestoreRefused
from .progress import Progress
from .snapshot import ProgressFactory, lock_for

log = logging.getLogger(__name__)

# Providers per call of the restore script: big enough to share one ZADD per index key among
# many providers, small enough that the API's requests wait little behind a call (about 60 us
# of Redis time per provider: some 30 ms a batch); at most 2,000, as the script unpacks two
# values per provider into one ZADD.
BATCH = 500


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did, or would do (`dry_run`)."""

    snapshot_id: int
    taken_at: str
    generation: str
    providers: int
    restored: int
    kept: int
    replaced: int
    duration_s: float
    dry_run: bool

    def summary(self) -> str:
        """Return the one-line summary an operator reads."""
        source = f"snapshot {self.snapshot_id} of {self.taken_at}"
        if self.dry_run:
            replacing = f", replacing the {self.replaced} providers Redis holds" if self.replaced else ""
            return f"dry run: would restore {self.providers} providers from {source}{replacing}; nothing changed"
        kept = f", {self.kept} kept as Redis holds them newer" if self.kept else ""
        replaced = f", {self.replaced} replaced" if self.replaced else ""
        return (
            f"restored {self.restored} providers from {source}, offline until they heartbeat"
            f"{kept}{replaced} in {self.duration_s:.1f} s"
        )


def restore(
    store: ProviderStore,
    database_url: str,
    *,
    force: bool = False,
    merge: bool = False,
    dry_run: bool = False,
    progress: ProgressFactory = Progress,
) -> RestoreResult:
    """Load the latest snapshot into Redis, under the snapshot lock (not taken for a dry run).

    Args:
        force: replace whatever Redis holds (every key of the registry is deleted first).
        merge: restore even though Redis holds providers; of a provider in both, the copy
            with the newer `last_seen_at` wins (as after a data loss, when daemons re-register).
        dry_run: check and report what would happen; change nothing.
    Raises:
        NothingToRestore, RestoreRefused, LockBusy, LockLost, DatabaseUnavailable,
        StoreUnavailable.
    """
    started = time.monotonic()
    lock = lock_for(store)
    if not dry_run and not lock.acquire():
        raise LockBusy("another instance is taking a snapshot or restoring; try again later")
    with lock, connect(database_url) as conn, conn.transaction():
        latest = conn.execute(
            "SELECT id, taken_at, generation FROM snapshots ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if latest is None:
            raise NothingToRestore(f"nothing to restore: {mask_url(database_url)} holds no snapshot")
        snapshot_id, taken_at, generation = latest[0], latest[1].astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), latest[2]
        total = conn.execute("SELECT count(*) FROM providers").fetchone()[0]
        present = store.count()
        if present and not force and not merge:
            would = "dry run: would refuse" if dry_run else "restore refused"
            raise RestoreRefused(
                f"{would}: Redis already holds {present} providers; "
                "`provider-registry restore --force` replaces them all"
            )
        if dry_run:
            return RestoreResult(
                snapshot_id=snapshot_id, taken_at=taken_at, generation=generation,
                providers=total, restored=0, kept=0, replaced=present,
                duration_s=time.monotonic() - started, dry_run=True,
            )
        if force:
            store.wipe(keep=(lock.key,))
        now_ms = store.now_ms()
        bar = progress("restore", total)
        # PostgreSQL streams the rows ahead (COPY), and Redis runs the previous batch while this
        # thread prepares the current one: no thread, so none waits for the GIL. In ID order,
        # each index's new members go after its others (cheaper ZADDs than in random order).
        with conn.cursor() as cur, cur.copy(
            "COPY (SELECT id, redis_hash FROM providers ORDER BY id) TO STDOUT (FORMAT binary)"
        ) as copy, store.restore_writer() as redis_writes:
            copy.set_types(["text", "bytea"])  # the hash as bytes: orjson reads them as they are
            rows = copy.rows()
            while batch := list(islice(rows, BATCH)):
                redis_writes.write(store.restore_batch([(pid, orjson.loads(raw)) for pid, raw in batch], now_ms))
                bar.advance(len(batch))
                if not lock.held():
                    raise LockLost("restore abandoned: the lock's lease lapsed")
            restored = redis_writes.close()
        bar.close()
        # Only now: a restore cut short leaves Redis without a marker, so snapshots refuse.
        store.set_generation(generation)
    return RestoreResult(
        snapshot_id=snapshot_id, taken_at=taken_at, generation=generation, providers=total,
        restored=restored, kept=total - restored, replaced=present if force else 0,
        duration_s=time.monotonic() - started, dry_run=False,
    )
