"""Why a snapshot or a restore did not run; each message is the one line an operator reads."""
from __future__ import annotations


class SnapshotError(Exception):
    """Base of the snapshot and restore failures; `str()` is a complete sentence."""


class DatabaseUnavailable(SnapshotError):
    """PostgreSQL cannot be reached or failed."""


class LockBusy(SnapshotError):
    """Another instance holds the snapshot lock."""


class LockLost(SnapshotError):
    """The lock's lease lapsed while working; nothing was committed."""


class SnapshotRefused(SnapshotError):
    """Redis does not hold the data set the snapshot holds: it lost its data."""


class RestoreRefused(SnapshotError):
    """Redis already holds providers and the restore was not forced."""


class NothingToRestore(SnapshotError):
    """PostgreSQL holds no snapshot."""
