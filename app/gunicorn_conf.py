"""gunicorn settings, read from the registry's own configuration.

Background jobs (the lease sweeper, and the other jobs) run in one child process that the
master starts when it is ready: once per instance, however many workers serve.
"""
from __future__ import annotations

import os
import subprocess
import sys

from app.cli import settings_or_exit

_settings = settings_or_exit()

bind = [f"{_settings.bind_host}:{_settings.port}"]
workers = _settings.workers
# gevent: a long poll of the event feed waits without holding a thread, so heartbeats never
# queue behind waiting schedulers. gthread serves a long poll per thread.
worker_class = _settings.worker_class
threads = _settings.threads
worker_connections = 1000
# Access lines come from the app, as JSON with the request ID.
accesslog = None
loglevel = _settings.log_level
graceful_timeout = 20
timeout = 30
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
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


def when_ready(server) -> None:  # type: ignore[no-untyped-def]
    """Start the background jobs process, once for this instance."""
    global _jobs
    _jobs = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "jobs", "--parent-pid", str(os.getpid())]
    )
    server.log.info("background jobs process started (pid %s)", _jobs.pid)


def on_exit(server) -> None:  # type: ignore[no-untyped-def]
    """Stop the background jobs process with the master."""
    if _jobs is not None and _jobs.poll() is None:
        _jobs.terminate()
        try:
            _jobs.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _jobs.kill()
