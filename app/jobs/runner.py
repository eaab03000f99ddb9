"""The jobs process: runs the background jobs of one instance until told to stop.

The gunicorn master starts it once (not once per worker), passing the port it bound, and stops
it on shutdown; it also exits by itself when the master disappears.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Protocol

from ..config import Settings
from ..registry import Registry
from .consul import ConsulRegistration
from .snapshot import SnapshotJob
from .sweeper import Sweeper

log = logging.getLogger(__name__)


class Job(Protocol):
    def run(self) -> None: ...
    def stop(self) -> None: ...


class JobRunner:
    """Run jobs in threads; stop them all on SIGTERM/SIGINT or when the parent dies.

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
        self.registry = Registry.from_settings(settings)
        self.jobs: list[Job] = []
        if settings.consul_enabled:
            # First, so that on stop the instance leaves Consul before anything else winds down.
            port = bound_port or settings.port
            self.jobs.append(ConsulRegistration(settings, port, self.registry.version))
        self.jobs.append(Sweeper(self.registry.store, settings.sweep_interval_s))
        if settings.database_url and settings.snapshot_interval_s > 0:
            self.jobs.append(SnapshotJob(self.registry.store, settings))
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Start the jobs and block until stopped."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        threads = [threading.Thread(target=job.run, name=type(job).__name__, daemon=True) for job in self.jobs]
        for thread in threads:
            thread.start()
        log.info("background jobs started", extra={"jobs": [t.name for t in threads]})
        while not self._stop.wait(1.0):
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.warning("parent process gone; stopping background jobs")
                break
        running = list(zip(self.jobs, threads))
        leaving = [(job, thread) for job, thread in running if isinstance(job, ConsulRegistration)]
        self._stop_jobs(leaving)
        self._announce_left_consul()
        self._stop_jobs([pair for pair in running if pair not in leaving])
        self.registry.close()
        log.info("background jobs stopped")

    @staticmethod
    def _stop_jobs(running: list[tuple[Job, threading.Thread]]) -> None:
        for job, _ in running:
            job.stop()
        for _, thread in running:
            thread.join(timeout=10)

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
