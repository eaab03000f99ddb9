"""gunicorn settings, read from the registry's own configuration.

Background jobs (the lease sweeper, Consul registration) run in one child process that the
master starts when it is ready: once per instance, however many workers serve. On SIGTERM the
instance leaves Consul first, then the workers finish their requests and close Redis.
"""
from __future__ import annotations

import logging
import os
import select
import subprocess
import sys

from gunicorn.glogging import Logger

from app.cli import settings_or_exit
from app.version import package_version

_settings = settings_or_exit()

bind = [f"{_settings.bind_host}:{_settings.port}"]
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


def when_ready(server) -> None:  # type: ignore[no-untyped-def]
    """Log the configuration, start the jobs process once, and leave Consul first on stop."""
    global _jobs, _left_consul
    port = bound_port(server)
    startup_log.info(
        "provider-registry starting",
        extra={"version": package_version(), "bound_port": port, "config": _settings.public_dict()},
    )
    _left_consul, write_end = os.pipe()
    _jobs = subprocess.Popen(
        [
            sys.executable, "-m", "app.cli", "jobs", "--parent-pid", str(os.getpid()),
            "--port", str(port), "--left-consul-fd", str(write_end),
        ],
        pass_fds=(write_end,),
    )
    os.close(write_end)
    server.log.info("background jobs process started (pid %s)", _jobs.pid)
    # gunicorn has no hook between a stop signal and the workers being told to stop:
    # handle_term (SIGTERM) and handle_int/handle_quit (SIGINT/SIGQUIT) run in the master's
    # loop and then close the listeners and signal the workers. Wrapping them is the earliest
    # point gunicorn lets us act, so Consul stops routing here while the workers still finish
    # their requests. The jobs process deregisters as the first step of stopping and never
    # registers again, then writes to the pipe (which also reads as ready if it dies).
    for name in ("handle_term", "handle_int", "handle_quit"):
        setattr(server, name, _leaving_consul_first(server, getattr(server, name)))


def _leaving_consul_first(server, handler):  # type: ignore[no-untyped-def]
    def handle() -> None:
        stop_jobs(server)
        handler()

    return handle


def stop_jobs(server) -> None:  # type: ignore[no-untyped-def]
    """Tell the jobs process to stop and wait, within a bound, until it has left Consul."""
    if _jobs is None or _jobs.poll() is not None:
        return
    _jobs.terminate()
    ready, _, _ = select.select([_left_consul], [], [], JOBS_LEAVE_TIMEOUT_S)
    if ready:
        server.log.info("instance left consul; stopping workers")
    else:
        server.log.warning("jobs process has not left consul in time; stopping workers anyway")


def worker_exit(server, worker) -> None:  # type: ignore[no-untyped-def]
    """Close the worker's Redis connections once it has finished its requests."""
    from app.registry import EXTENSION  # Not at the top: the master must not import redis.

    app = getattr(worker, "wsgi", None)
    registry = getattr(app, "extensions", {}).get(EXTENSION)
    if registry is not None:
        registry.close()
        server.log.info("worker %s closed its redis connections", worker.pid)


def on_exit(server) -> None:  # type: ignore[no-untyped-def]
    """Stop the background jobs process with the master, if a stop signal has not already."""
    if _jobs is not None and _jobs.poll() is None:
        _jobs.terminate()
        try:
            _jobs.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _jobs.kill()
