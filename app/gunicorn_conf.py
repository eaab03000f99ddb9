"""gunicorn settings, read from the registry's own configuration.

The workers run the background jobs themselves, however the app is served (app/jobs/background.py):
these settings add only that Consul registration runs in one child process of the master, which
holds the instance lock so that no worker registers, and that on SIGTERM the instance leaves
Consul first; then the workers finish their requests and close Redis.
"""
from __future__ import annotations

import logging
import os
import select
import subprocess
import sys

from gunicorn.glogging import Logger

from app import multiproc
from app.cli import settings_or_exit
from app.jobs.instance import InstanceLock, instance_lock_path
from app.version import package_version

_settings = settings_or_exit()

bind = [_settings.bind_address()]
workers = _settings.workers
# gevent: a long poll of the event feed waits without holding a thread, so heartbeats never
# queue behind waiting schedulers. gthread serves a long poll per thread.
# Each is gunicorn's own class, answering the requests gunicorn refuses in JSON (app/workers.py).
# gunicorn itself runs a sync worker with threads > 1 as gthread; so do we, with our subclass.
worker_class = {
    "gevent": "app.workers.JsonGeventWorker",
    "gthread": "app.workers.JsonThreadWorker",
    "sync": "app.workers.JsonSyncWorker" if _settings.threads == 1 else "app.workers.JsonThreadWorker",
}[_settings.worker_class]
threads = _settings.threads
# Bounds the connections (and file descriptors) a worker holds; slow clients are cut off by
# body_timeout_s, and on gevent the request line and headers by keepalive (docs/RELIABILITY.md).
worker_connections = _settings.worker_connections
keepalive = 2
# Access lines come from the app, as JSON with the request ID.
accesslog = None


class AppLogsAccess(Logger):
    """gunicorn's logger without its access line: the app writes one per request itself."""

    def access(self, resp, req, environ, request_time) -> None:  # type: ignore[no-untyped-def]
        # With logconfig_dict set, gunicorn would build every access line's atoms (~50 µs a
        # request under a profiler, bench/) and only then drop it at gunicorn.access's level.
        return None


logger_class = AppLogsAccess
loglevel = _settings.log_level
graceful_timeout = 20
timeout = 30
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.orjson.OrjsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    },
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
    },
    "root": {"handlers": ["stdout"], "level": _settings.log_level.upper()},
    "loggers": {
        "gunicorn.error": {"handlers": ["stdout"], "level": _settings.log_level.upper(), "propagate": False},
        "gunicorn.access": {"handlers": ["stdout"], "level": "WARNING", "propagate": False},
    },
}

_jobs: subprocess.Popen[bytes] | None = None
_instance_lock: InstanceLock | None = None
_left_consul = -1  # Read end of the pipe on which the jobs process says it has left Consul.
# How long the master waits, on a stop signal, for the jobs process to leave Consul (the agent
# call itself times out after 3 s).
JOBS_LEAVE_TIMEOUT_S = 5.0
startup_log = logging.getLogger("app.startup")


def bound_port(server) -> int:  # type: ignore[no-untyped-def]
    """Return the TCP port gunicorn actually bound (port 0 asks the OS to choose one)."""
    for listener in server.LISTENERS:
        address = listener.getsockname()
        if isinstance(address, tuple):
            return int(address[1])
    return _settings.port


def on_starting(server) -> None:  # type: ignore[no-untyped-def]
    """Make the instance's metrics directory, which every worker inherits (app/metrics.py)."""
    multiproc.prepare()


def when_ready(server) -> None:  # type: ignore[no-untyped-def]
    """Log the configuration, start the Consul process once, and leave Consul first on stop."""
    global _jobs, _left_consul
    port = bound_port(server)
    startup_log.info(
        "provider-registry starting",
        extra={"version": package_version(), "bound_port": port, "config": _settings.public_dict()},
    )
    if not _settings.consul_enabled:
        return
    # Before the workers exist: they find the instance taken and leave Consul to the child.
    global _instance_lock
    _instance_lock = InstanceLock(instance_lock_path(_settings, port))
    if not _instance_lock.try_acquire():
        server.log.warning("another process registers this instance in consul (instance lock held)")
        return
    _left_consul, write_end = os.pipe()
    _jobs = subprocess.Popen(
        [
            sys.executable, "-m", "app.cli", "jobs", "--parent-pid", str(os.getpid()),
            "--port", str(port), "--left-consul-fd", str(write_end),
        ],
        pass_fds=(write_end,),
    )
    os.close(write_end)
    server.log.info("consul process started (pid %s)", _jobs.pid)
    # gunicorn has no hook between a stop signal and the workers being told to stop:
    # handle_term (SIGTERM) and handle_int/handle_quit (SIGINT/SIGQUIT) run in the master's
    # loop and then close the listeners and signal the workers. Wrapping them is the earliest
    # point gunicorn lets us act, so Consul stops routing here while the workers still finish
    # their requests. The Consul process deregisters as the first step of stopping and never
    # registers again, then writes to the pipe (which also reads as ready if it dies).
    for name in ("handle_term", "handle_int", "handle_quit"):
        setattr(server, name, _leaving_consul_first(server, getattr(server, name)))


def _leaving_consul_first(server, handler):  # type: ignore[no-untyped-def]
    def handle() -> None:
        stop_jobs(server)
        handler()

    return handle


def stop_jobs(server) -> None:  # type: ignore[no-untyped-def]
    """Tell the Consul process to stop and wait, within a bound, until it has left Consul."""
    if _jobs is None or _jobs.poll() is not None:
        return
    _jobs.terminate()
    ready, _, _ = select.select([_left_consul], [], [], JOBS_LEAVE_TIMEOUT_S)
    if ready:
        server.log.info("instance left consul; stopping workers")
    else:
        server.log.warning("consul process has not left consul in time; stopping workers anyway")


def worker_exit(server, worker) -> None:  # type: ignore[no-untyped-def]
    """Stop the worker's jobs (giving up the leadership at once), then close its Redis connections."""
    from app.jobs.background import JOBS_EXTENSION  # Not at the top: the master must not import redis.
    from app.registry import EXTENSION

    app = getattr(worker, "wsgi", None)
    jobs = getattr(app, "extensions", {}).get(JOBS_EXTENSION)
    if jobs is not None:
        jobs.stop()
    registry = getattr(app, "extensions", {}).get(EXTENSION)
    if registry is not None:
        registry.close()
        server.log.info("worker %s closed its redis connections", worker.pid)


def child_exit(server, worker) -> None:  # type: ignore[no-untyped-def]
    """Drop the live gauges of a worker that exited (its counters still count)."""
    multiproc.worker_gone(worker.pid)


def on_exit(server) -> None:  # type: ignore[no-untyped-def]
    """Stop the Consul process with the master, if a stop signal has not already; drop the metrics."""
    multiproc.remove()
    if _jobs is not None and _jobs.poll() is None:
        _jobs.terminate()
        try:
            _jobs.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _jobs.kill()
