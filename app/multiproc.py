"""The metrics directory of one gunicorn instance (prometheus-client's multiprocess mode).

Kept free of Flask and Redis imports: the gunicorn master calls it from its configuration,
before any worker exists. The master makes a fresh directory and names it in the environment
the workers inherit; each worker's counters are files there, which a scrape adds up. A dead
worker's live gauges are dropped (its counters stay: they are history); the master removes the
directory when it exits.
"""
from __future__ import annotations

import os
import shutil
import tempfile

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_made: str | None = None


def prepare() -> str:
    """Return the instance's metrics directory, making a fresh one unless the variable names one.

    An operator's own directory is used as it is (prometheus-client asks that it be emptied
    between runs: that is then the operator's to do).
    """
    global _made
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        return given
    _made = tempfile.mkdtemp(prefix="registry-metrics-")
    os.environ[MULTIPROC_ENV] = _made
    return _made


def worker_gone(pid: int) -> None:
    """Forget a dead worker's live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def remove() -> None:
    """Remove the directory this master made, if it made one."""
    global _made
    if _made is not None:
        shutil.rmtree(_made, ignore_errors=True)
        _made = None
