"""gunicorn settings of the floor app: the registry's own worker settings, imported, not copied.

Only the worker model is taken (class, workers, threads, connections, timeouts, and the bind
from REGISTRY_PORT); the registry's hooks (its jobs process) and logging stay out, as a bare
Flask app has neither.
"""
from app.gunicorn_conf import (
    bind,
    graceful_timeout,
    threads,
    timeout,
    worker_class,
    worker_connections,
    workers,
)

__all__ = ["bind", "graceful_timeout", "threads", "timeout", "worker_class", "worker_connections", "workers"]
