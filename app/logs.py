"""JSON logging to stdout, and one access line per request with its request ID."""
from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request
from pythonjsonlogger.orjson import OrjsonFormatter

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("app.access")


def configure_logging(level: str) -> None:
    """Send every log record to stdout as one JSON object; call once per process."""
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


def request_id_from(given: str | None) -> str:
    """Return the request's ID: the caller's X-Request-ID when sane, else a new one."""
    return given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex


def log_request(
    request_id: str, method: str, path: str, status: int, duration_ms: float, fields: dict[str, Any]
) -> None:
    """Write a request's access line: every route's, and the heartbeat's fast path's."""
    access_log.info(
        "request",
        extra={
            "request_id": request_id,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(duration_ms, 3),
            # What a view adds, such as the clock a daemon claims to have.
            **fields,
        },
    )


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
