"""A lock in Redis held under a lease, so that a holder that dies frees it by itself."""
from __future__ import annotations

import logging
import secrets
import threading
import time
from types import TracebackType

import redis

from .scripts import standalone_script, wrap_errors

log = logging.getLogger(__name__)


class LeaseLock:
    """Hold `key` with a random token under a lease of `lease_s`, renewed while held.

    A holder that stops renewing (killed, frozen, cut off from Redis) loses the lock when its
    lease lapses; `held()` then turns false so that the work can stop before committing.
    """

    def __init__(self, client: redis.Redis, key: str, lease_s: float = 30.0) -> None:
        self.redis = client
        self.key = key
        self.lease_ms = int(lease_s * 1000)
        self.token = ""
        self._renew = standalone_script(client, "lock_renew")
        self._release = standalone_script(client, "lock_release")
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    @wrap_errors
    def acquire(self) -> bool:
        """Take the lock if it is free; start renewing it. Return whether it was taken."""
        token = secrets.token_hex(16)
        if not self.redis.set(self.key, token, nx=True, px=self.lease_ms):
            return False
        self.token = token
        self._stop.clear()
        self._lost.clear()
        self._thread = threading.Thread(target=self._keep, name="lease-lock", daemon=True)
        self._thread.start()
        return True

    def held(self) -> bool:
        """Return whether the lock is still ours as far as the renewals know."""
        return bool(self.token) and not self._lost.is_set()

    def _keep(self) -> None:
        # Renew at a third of the lease: two renewals may fail before the lease lapses.
        renewed_at = time.monotonic()
        while not self._stop.wait(self.lease_ms / 3000):
            try:
                if not self._renew(keys=[self.key], args=[self.token, self.lease_ms]):
                    log.warning("lock lost: another holder has it", extra={"key": self.key})
                    self._lost.set()
                    return
                renewed_at = time.monotonic()
            except redis.RedisError as exc:
                if time.monotonic() - renewed_at >= self.lease_ms / 1000:
                    log.warning("lock lost: lease lapsed", extra={"key": self.key, "error": str(exc)})
                    self._lost.set()
                    return

    def release(self) -> None:
        """Stop renewing and delete the lock if it is still ours (best effort)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.token:
            try:
                self._release(keys=[self.key], args=[self.token])
            except redis.RedisError:
                pass  # the lease frees it anyway
            self.token = ""

    def __enter__(self) -> "LeaseLock":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
