"""PostgreSQL snapshots of the registry, and restores from them (needs the `snapshot` extra).

The snapshot keeps a `providers` table equal to Redis, for restores and for analysts; see the
README for its tables and the restore procedure.
"""
from .errors import (
    DatabaseUnavailable,
    LockBusy,
    LockLost,
    NothingToRestore,
    RestoreRefused,
    SnapshotError,
    SnapshotRefused,
)
from .restore import RestoreResult, restore
from .snapshot import SnapshotResult, take_snapshot

__all__ = [
    "DatabaseUnavailable", "LockBusy", "LockLost", "NothingToRestore", "RestoreRefused",
    "RestoreResult", "SnapshotError", "SnapshotRefused", "SnapshotResult", "restore",
    "take_snapshot",
]
