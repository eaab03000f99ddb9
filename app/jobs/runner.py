"""The Consul process: keeps one instance registered in Consul under the package's gunicorn settings.

The gunicorn master holds the instance lock (instance.py) and starts this process once, passing
the port it bound; on a stop signal the master has it leave Consul before the workers stop, and
it exits by itself when the master disappears. The sweeper, snapshots and data watch do not
run here: every serving process takes part in their election (background.py).
"""
from __future__ import annotations

import logging
import os
import signal
import threading

from ..config import Settings
from ..version import package_version
from .consul import ConsulRegistration

log = logging.getLogger(__name__)


class JobRunner:
    """Run the instance's Consul registration; stop on SIGTERM/SIGINT or when the parent dies.

    Stopping leaves Consul first and says so on `left_consul_fd`, for the master waiting on it.
    """

    def __init__(
        self,
        settings: Settings,
        parent_pid: int | None = None,
        bound_port: int | None = None,
        left_consul_fd: int | None = None,
    ) -> None:
        self.settings = settings
        self.parent_pid = parent_pid
        self.left_consul_fd = left_consul_fd
        self.jobs: list[ConsulRegistration] = []
        if settings.consul_enabled:
            self.jobs.append(ConsulRegistration(settings, bound_port or settings.port, package_version()))
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Start the registration and block until stopped."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        threads = [threading.Thread(target=job.run, name=type(job).__name__, daemon=True) for job in self.jobs]
        for thread in threads:
            thread.start()
        log.info("consul process started", extra={"jobs": [t.name for t in threads]})
        while not self._stop.wait(1.0):
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.warning("parent process gone; leaving consul")
                break
        for job in self.jobs:
            job.stop()
        for thread in threads:
            thread.join(timeout=10)
        self._announce_left_consul()
        log.info("consul process stopped")

    def _announce_left_consul(self) -> None:
        """Tell the master the instance has left Consul, so that it can stop the workers."""
        if self.left_consul_fd is None:
            return
        try:
            os.write(self.left_consul_fd, b"1")
            os.close(self.left_consul_fd)
        except OSError:
            pass  # The master is gone or stopped waiting: nobody to tell.
        self.left_consul_fd = None
