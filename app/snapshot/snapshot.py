"""Take a snapshot: make the `providers` table equal to Redis, and record the counts.

Only rows whose hash (or effective status) changed since the last snapshot are rewritten,
with COPY, a batch at a time; the whole snapshot is one transaction, committed only while
this instance still holds the lock.
"""
from __future__ import annotations

import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

import psycopg

from ..store import ProviderStore
from ..store.lock import LeaseLock
from .database import connect
from .errors import LockBusy, LockLost, SnapshotRefused
from .pipeline import Behind
from .progress import Progress
from .rows import COPY_SQL, HEADER, TRAILER, Counts, Row, RowBuilder

log = logging.getLogger(__name__)

BATCH = 1000
LOCK_LEASE_S = 30.0
# Any constant: two registries writing one database (a mistake) take turns, not mix rows.
_WRITE_LOCK = 7_305_112_002

ProgressFactory = Callable[[str, int], Progress]


@dataclass(frozen=True)
class SnapshotResult:
    """What a snapshot did."""

    snapshot_id: int
    generation: str
    providers: int
    gpus: int
    added: int
    changed: int
    removed: int
    odd: int
    duration_s: float
    forced: bool

    def summary(self) -> str:
        """Return the one-line summary an operator reads."""
        odd = f", {self.odd} odd providers stored for restore only" if self.odd else ""
        return (
            f"snapshot {self.snapshot_id}: {self.providers} providers, {self.gpus} GPUs "
            f"({self.added} added, {self.changed} changed, {self.removed} removed{odd}) "
            f"in {self.duration_s:.1f} s"
        )


def lock_for(store: ProviderStore) -> LeaseLock:
    """Return the lock that snapshots and restores of this registry share."""
    return LeaseLock(store.redis, store.keys.snapshot_lock, LOCK_LEASE_S)


def new_generation() -> str:
    """Return a fresh generation marker."""
    return secrets.token_hex(8)


def take_snapshot(
    store: ProviderStore,
    database_url: str,
    *,
    force: bool = False,
    retention_days: int = 0,
    due_after_s: float | None = None,
    progress: ProgressFactory = Progress,
) -> SnapshotResult | None:
    """Snapshot the registry into PostgreSQL, under the lock.

    Args:
        force: snapshot even though Redis lost the data set the table holds.
        retention_days: history (counts) kept, in days; 0 keeps it all.
        due_after_s: skip (return None) when the latest snapshot is younger than this, as
            when another instance just took it.
    Raises:
        LockBusy, SnapshotRefused, LockLost, DatabaseUnavailable, StoreUnavailable.
    """
    lock = lock_for(store)
    if not lock.acquire():
        raise LockBusy("another instance is taking a snapshot or restoring; try again later")
    with lock, connect(database_url) as conn:
        return _snapshot(conn, store, lock, force, retention_days, due_after_s, progress)


def _snapshot(
    conn: psycopg.Connection,
    store: ProviderStore,
    lock: LeaseLock,
    force: bool,
    retention_days: int,
    due_after_s: float | None,
    progress: ProgressFactory,
) -> SnapshotResult | None:
    started = time.monotonic()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
        now_ms = store.now_ms()
        taken_at = datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc)
        latest = conn.execute(
            "SELECT taken_at, generation FROM snapshots ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if due_after_s is not None and latest and taken_at - latest[0] < timedelta(seconds=due_after_s):
            return None

        marker = store.generation()
        expected = latest[1] if latest else None
        has_rows = conn.execute("SELECT EXISTS (SELECT 1 FROM providers)").fetchone()[0]
        if has_rows and (expected is None or marker != expected) and not force:
            held = f"marker {marker}" if marker else "no generation marker"
            raise SnapshotRefused(
                f"snapshot refused: Redis holds {held} but the snapshot holds generation "
                f"{expected}; Redis lost its data: run `provider-registry restore`, or "
                "`provider-registry snapshot --force` to overwrite the snapshot"
            )
        new_marker = marker is None
        generation = marker or new_generation()

        snapshot_id = conn.execute(
            "INSERT INTO snapshots (taken_at, generation, providers, gpus, added, changed,"
            " removed, duration_ms, forced) VALUES (%s, %s, 0, 0, 0, 0, 0, 0, %s) RETURNING id",
            (taken_at, generation, force),
        ).fetchone()[0]
        existing: dict[str, bytes] = dict(conn.execute("SELECT id, digest FROM providers").fetchall())

        builder, counts = RowBuilder(now_ms), Counts()
        seen: set[str] = set()
        added = changed = 0
        ids = store.provider_ids()
        bar = progress("snapshot", len(ids))
        # Redis reads the next batch and PostgreSQL writes the previous one while this thread
        # builds the rows of the current one. All the Python work is done here: the writer
        # thread only waits for PostgreSQL, so that the threads do not take turns at the GIL.
        reads = store.iter_hashes(ids, BATCH)
        writes: Behind[int] = Behind()
        with contextlib.closing(reads), writes:
            for read_at, hashes in reads:
                dirty = []
                for provider_id, fields in hashes:
                    row = builder.read(provider_id, fields, read_at)
                    counts.add(row)
                    seen.add(provider_id)
                    old = existing.get(provider_id)
                    if old != row.digest:
                        dirty.append(row)
                        if old is None:
                            added += 1
                        else:
                            changed += 1
                if dirty:
                    writes.submit(_write, conn, builder, dirty, [builder.data(row) for row in dirty], existing)
                bar.advance(len(hashes))
                if not lock.held():
                    raise LockLost("snapshot abandoned: the lock's lease lapsed; nothing was written")
            writes.wait()
        odd = sum(writes.results)
        bar.close()

        gone = [provider_id for provider_id in existing if provider_id not in seen]
        if gone:
            conn.execute("DELETE FROM providers WHERE id = ANY(%s)", (gone,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO snapshot_counts (snapshot_id, status, gpu_model, providers, gpus)"
                " VALUES (%s, %s, %s, %s, %s)",
                [(snapshot_id, *row) for row in counts.rows()],
            )
        duration_s = time.monotonic() - started
        result = SnapshotResult(
            snapshot_id=snapshot_id, generation=generation, providers=len(seen),
            gpus=counts.total_gpus, added=added, changed=changed, removed=len(gone), odd=odd,
            duration_s=duration_s, forced=force,
        )
        conn.execute(
            "UPDATE snapshots SET providers = %s, gpus = %s, added = %s, changed = %s,"
            " removed = %s, duration_ms = %s WHERE id = %s",
            (result.providers, result.gpus, added, changed, len(gone), int(duration_s * 1000), snapshot_id),
        )
        _apply_retention(conn, snapshot_id, taken_at, retention_days)
        if not lock.held():
            raise LockLost("snapshot abandoned: the lock's lease lapsed; nothing was written")
    if new_marker:
        store.set_generation(generation)
    return result


def _apply_retention(conn: psycopg.Connection, snapshot_id: int, taken_at: datetime, days: int) -> None:
    """Delete the history older than `days` (0: keep it all); the latest snapshot always stays."""
    if days > 0:
        conn.execute(
            "DELETE FROM snapshots WHERE taken_at < %s AND id <> %s",
            (taken_at - timedelta(days=days), snapshot_id),
        )


def _write(
    conn: psycopg.Connection, builder: RowBuilder, dirty: list[Row], data: list[bytes], existing: dict[str, bytes]
) -> int:
    """Replace the rows of `dirty` providers with `data`; return how many went in only as a minimal row."""
    try:
        with conn.transaction():
            _replace(conn, dirty, existing, data)
        return 0
    except psycopg.DataError as exc:
        log.warning("snapshot batch refused; retrying it one provider at a time", extra={"error": str(exc)})
    odd = 0
    for row in dirty:
        try:
            with conn.transaction():
                _replace(conn, [row], existing, [builder.data(row, strict=True)])
        except psycopg.DataError as exc:
            log.warning(
                "provider stored for restore only: PostgreSQL refused its details",
                extra={"provider_id": row.id, "error": str(exc)},
            )
            with conn.transaction():
                _replace(conn, [row], existing, [builder.data(row, minimal=True)])
            odd += 1
    return odd


def text_array(values: list[str]) -> str:
    """Return a PostgreSQL array literal of `values`, each quoted."""
    return "{" + ",".join('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values) + "}"


def _replace(conn: psycopg.Connection, rows: list[Row], existing: dict[str, bytes], data: list[bytes]) -> None:
    stale = [row.id for row in rows if row.id in existing]
    if stale:
        # One text parameter, cast by PostgreSQL: psycopg adapts a list item by item in Python.
        conn.execute("DELETE FROM providers WHERE id = ANY(%s::text[])", (text_array(stale),))
    with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
        copy.write(b"".join((HEADER, *data, TRAILER)))
