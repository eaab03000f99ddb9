"""gunicorn settings to profile the registry's request path: its real settings, one sync worker.

cProfile sees only the thread that enables it, so the single worker is `sync` (requests run
in the worker's main thread); the app code, and so the profile of a request, is the same as
under gthread. The worker writes its profile to $BENCH_PROFILE_OUT when it exits.

    REGISTRY_PORT=... REGISTRY_REDIS_URL=... BENCH_PROFILE_OUT=/tmp/worker.prof \
        gunicorn -c bench/profile_gunicorn_conf.py app.wsgi:app
"""
import cProfile
import os

from app.gunicorn_conf import *  # noqa: F401,F403  (bind, logging, the jobs process hooks)

workers = 1
worker_class = "sync"
threads = 1  # gunicorn turns a sync worker with threads > 1 into gthread
_profile = cProfile.Profile()


def post_worker_init(worker) -> None:  # type: ignore[no-untyped-def]
    """Start profiling once the worker has loaded the app."""
    _profile.enable()


def worker_exit(server, worker) -> None:  # type: ignore[no-untyped-def]
    """Write the profile where $BENCH_PROFILE_OUT says."""
    _profile.disable()
    _profile.dump_stats(os.environ.get("BENCH_PROFILE_OUT", "worker.prof"))
