"""Start the background jobs in whatever process serves the app, however it was started.

`gunicorn app.wsgi:app` with or without the package's settings, `provider-registry serve`, the
container, or another WSGI server: each serving process takes part (see `install`). The sweeper,
the snapshots and the data watch run in the elected leader only (leader.py); Consul
registration in one process per instance (instance.py).
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Protocol

from ..registry import EXTENSION, Registry
from .datawatch import DataWatch
from .instance import InstanceRegistration
from .leader import LeaderLease
from .pulse import Pulse
from .snapshot import SnapshotJob
from .sweeper import Sweeper

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

JOBS_EXTENSION = "provider_registry_jobs"
STOP_TIMEOUT_S = 10.0


class Job(Protocol):
    def run(self) -> None: ...
    def stop(self) -> None: ...


class BackgroundJobs:
    """The jobs of one serving process: every elected job, and the instance's Consul registration."""

    def __init__(self, registry: Registry) -> None:
        settings, store = registry.settings, registry.store
        self.leader = LeaderLease(registry.redis, store.keys.leader)
        leading = self.leader.is_leader
        self.sweeper = Sweeper(store, settings.sweep_interval_s, leading=leading)
        self.jobs: list[Job] = []
        if settings.consul_enabled:
            # First, so that on stop the instance leaves Consul before anything else winds down.
            self.jobs.append(InstanceRegistration(settings, registry.version))
        if settings.outage_grace_after_s > 0:
            self.jobs.append(Pulse(store, settings.outage_grace_after_s))
        self.jobs.append(self.sweeper)
        if settings.database_url:
            self.jobs.append(DataWatch(store, settings, leading=leading))
            if settings.snapshot_interval_s > 0:
                self.jobs.append(SnapshotJob(store, settings, leading=leading))
        # Last: the lease goes once the jobs it guards have stopped.
        self.jobs.append(self.leader)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start every job in a daemon thread (a greenlet under gevent's patched threading)."""
        self._threads = [
            threading.Thread(target=job.run, name=type(job).__name__, daemon=True) for job in self.jobs
        ]
        for thread in self._threads:
            thread.start()
        log.info("background jobs started", extra={"jobs": [t.name for t in self._threads], "pid": os.getpid()})

    def stop(self) -> None:
        """Stop the jobs in order: leave Consul, stop the elected jobs, give the lease up."""
        for job, thread in zip(self.jobs, self._threads):
            job.stop()
            thread.join(timeout=STOP_TIMEOUT_S)
        self._threads = []
        log.info("background jobs stopped", extra={"pid": os.getpid()})


class ProcessJobs:
    """The app's background jobs, started once per process (a fork starts its own)."""

    def __init__(self, app: "Flask") -> None:
        self.app = app
        self.jobs: BackgroundJobs | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        """Start the jobs in this process unless they run already; cheap when they do."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self.jobs = BackgroundJobs(self.app.extensions[EXTENSION])
            self.jobs.start()
            self._pid = os.getpid()
            atexit.register(self.stop)

    def stop(self) -> None:
        """Stop this process's jobs, if it started them."""
        if self.jobs is not None and self._pid == os.getpid():
            self.jobs.stop()
            self._pid = None


def install(app: "Flask") -> ProcessJobs:
    """Run the background jobs in every process that serves `app`.

    They start now, unless a gunicorn master is preloading the app (`--preload`): threads
    started before a fork do not exist in the workers, and under gevent they would be real
    threads started before the worker patched the standard library. Every process also starts
    them at its first request, if not already, which covers a fork and servers that load the
    app before forking.
    """
    jobs = app.extensions[JOBS_EXTENSION] = ProcessJobs(app)
    app.before_request(jobs.ensure_started)
    if not _gunicorn_master_loading():
        jobs.ensure_started()
    return jobs


def _gunicorn_master_loading() -> bool:
    """Return whether the gunicorn master is loading the app now (in `Arbiter.setup`)."""
    arbiter = sys.modules.get("gunicorn.arbiter")
    if arbiter is None:
        return False
    setup = arbiter.Arbiter.setup.__code__
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code is setup:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False
