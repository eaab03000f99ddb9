"""Leadership: one process per registry (per key prefix) runs the once-per-deployment jobs.

Every serving process competes for one key in Redis, held under a lease of a few seconds that
the holder renews; the others try to take it at every step. A leader that dies (killed, frozen,
cut off from Redis) stops renewing, and a follower takes over within about one lease.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time

import redis

from ..store.scripts import standalone_script

log = logging.getLogger(__name__)

# Short, so that a follower takes over soon after the leader dies; long enough that a leader
# busy for a moment (a snapshot's batch, a slow Redis call) keeps it.
LEASE_S = 5.0
# Each process renews (leader) or tries (follower) this often: four renewals may fail in a row
# before the lease lapses, and a follower waits at most one step past the lapse.
STEP_S = 1.0


class LeaderLease:
    """Take and keep the lease on `key`; `is_leader()` says whether this process holds it.

    The holder's value names it (`host:pid:token`), for operators reading the key.
    """

    def __init__(self, client: redis.Redis, key: str, lease_s: float = LEASE_S, step_s: float = STEP_S) -> None:
        self.redis = client
        self.key = key
        self.lease_ms = int(lease_s * 1000)
        self.step_s = step_s
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._renew = standalone_script(client, "lock_renew")
        self._release = standalone_script(client, "lock_release")
        self._valid_until = 0.0
        self._leading = False
        self._stop = threading.Event()
        self._outage = False

    def is_leader(self) -> bool:
        """Return whether this process holds the lease, as of its last renewal."""
        return self._leading and time.monotonic() < self._valid_until

    def step(self) -> bool:
        """Renew the lease if held, else try to take it; return whether this process leads."""
        # Measured before the call: the lease in Redis began after this, so it outlives our
        # belief in it; one step is kept in hand against clock drift.
        sent_at = time.monotonic()
        try:
            if self._leading:
                held = bool(self._renew(keys=[self.key], args=[self.identity, self.lease_ms]))
            else:
                held = bool(self.redis.set(self.key, self.identity, nx=True, px=self.lease_ms))
        except redis.RedisError as exc:
            if not self._outage:
                log.warning("leadership: store unavailable, retrying", extra={"error": str(exc)})
            self._outage = True
            held = self._leading and self.is_leader()
        else:
            self._outage = False
            if held:
                self._valid_until = sent_at + self.lease_ms / 1000 - self.step_s
        if held != self._leading:
            if held:
                log.info("became the leader: running the sweeper and snapshots",
                         extra={"leader": self.identity, "key": self.key})
            else:
                log.warning("lost the leadership", extra={"leader": self.identity, "key": self.key})
        self._leading = held
        return held

    def run(self) -> None:
        """Take part in the election until `stop()`, then give the lease up if held."""
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.step_s)
        self.release()

    def release(self) -> None:
        """Give the lease up now, so that a follower need not wait for it to lapse."""
        if not self._leading:
            return
        self._leading = False
        try:
            self._release(keys=[self.key], args=[self.identity])
            log.info("gave up the leadership", extra={"leader": self.identity, "key": self.key})
        except redis.RedisError:
            pass  # the lease lapses by itself

    def stop(self) -> None:
        """Ask the loop to end and release the lease."""
        self._stop.set()
