"""JSON logging to stdout, and one access line per request with its request ID."""
from __future__ import annotations

import functools
import logging
import re
import sys
import time
import uuid
from typing import Any

import orjson
from flask import Flask, Response, g, request
from pythonjsonlogger.orjson import OrjsonFormatter

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("app.access")
# The handler configure_logging installed, while it is the only one listening.
_handler: logging.StreamHandler | None = None  # type: ignore[type-arg]


def configure_logging(level: str) -> None:
    """Send every log record to stdout as one JSON object; call once per process."""
    global _handler
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        OrjsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _handler = handler


@functools.lru_cache(maxsize=4)
def _asctime_second(second: int) -> str:
    # logging.Formatter's default asctime, to the second (local time, as its converter).
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))


def _direct_handler() -> logging.StreamHandler | None:  # type: ignore[type-arg]
    """Return configure_logging's handler when an access line would reach it alone, unfiltered."""
    root = logging.root
    if (
        _handler is None
        or root.handlers != [_handler]
        or access_log.handlers
        or access_log.filters
        or root.filters
        or _handler.filters
        or not access_log.propagate
        or access_log.disabled
    ):
        return None
    return _handler


def _write_access_line(handler: logging.StreamHandler, entry: dict[str, Any]) -> None:  # type: ignore[type-arg]
    """Write the line the handler's formatter would, without the logging machinery.

    A LogRecord, its formatter and the handler's dispatch cost about a tenth of a heartbeat's
    worker CPU (py-spy); the line is the same, written and flushed under the handler's lock.
    """
    now = time.time()
    line = orjson.dumps(
        {"time": f"{_asctime_second(int(now))},{int(now * 1000) % 1000:03d}", "level": "INFO",
         "logger": access_log.name, "message": "request", **entry},
        default=str,
    )
    with handler.lock:  # type: ignore[union-attr]
        stream = handler.stream
        stream.write(line.decode() + "\n")
        stream.flush()


def request_id_from(given: str | None) -> str:
    """Return the request's ID: the caller's X-Request-ID when sane, else a new one."""
    return given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex


def log_request(
    request_id: str, method: str, path: str, status: int, duration_ms: float, fields: dict[str, Any]
) -> None:
    """Write a request's access line: every route's, and the heartbeat's fast path's.

    Through the logging machinery, unless only configure_logging's handler would see it.
    """
    if not access_log.isEnabledFor(logging.INFO):
        return
    entry = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(duration_ms, 3),
        # What a view adds, such as the clock a daemon claims to have.
        **fields,
    }
    handler = _direct_handler()
    if handler is not None:
        try:
            _write_access_line(handler, entry)
            return
        except (OSError, ValueError):
            pass  # a closed or broken stream: logging reports it as it does for every record
    access_log.info("request", extra=entry)


def install_request_logging(app: Flask) -> None:
    """Tag each request with an ID (the caller's X-Request-ID when sane) and log it."""

    @app.before_request
    def _start() -> None:
        g.request_id = request_id_from(request.headers.get("X-Request-ID"))
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = g.get("request_id") or uuid.uuid4().hex
        response.headers["X-Request-ID"] = request_id
        started = g.get("started")
        duration_ms = (time.perf_counter() - started) * 1000 if started else 0.0
        # The raw path: werkzeug's request.path re-decodes it on every access.
        log_request(
            request_id, request.method, request.environ.get("PATH_INFO", ""),
            response.status_code, duration_ms, g.get("log_fields", {}),
        )
        return response
