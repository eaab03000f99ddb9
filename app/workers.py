"""gunicorn's worker classes, answering requests gunicorn itself refuses in the registry's JSON.

gunicorn parses the request line and headers before the app sees anything, and answers what it
cannot parse from the worker's `handle_error` with an HTML page. These subclasses write the
error body every other failure has (app/errors.py): `{"error", "code", "details"}`.
Selected in app/gunicorn_conf.py by `worker_class`.
"""
from __future__ import annotations

import json
from ssl import SSLError
from typing import Any

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers.ggevent import GeventWorker
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

# Longest part of the client's own bytes echoed back in a message.
MAX_MESSAGE_CHARS = 200

# (exception, status, reason, code), first match wins; codes as app/errors.py derives them
# from the status's name.
_REFUSALS: list[tuple[type[BaseException], int, str, str]] = [
    (http_errors.LimitRequestLine, 414, "URI Too Long", "uri_too_long"),
    (http_errors.LimitRequestHeaders, 431, "Request Header Fields Too Large",
     "request_header_fields_too_large"),
    # RFC 9112 6.1: a transfer coding the server does not understand is a 501.
    (http_errors.UnsupportedTransferCoding, 501, "Not Implemented", "not_implemented"),
    (http_errors.ExpectationFailed, 417, "Expectation Failed", "expectation_failed"),
    (http_errors.ForbiddenProxyRequest, 403, "Forbidden", "forbidden"),
    (SSLError, 403, "Forbidden", "forbidden"),
    (http_errors.ParseException, 400, "Bad Request", "bad_request"),
]


def classify(exc: BaseException) -> tuple[int, str, str, str]:
    """Return the status, reason, code and message for an error gunicorn raised."""
    if isinstance(exc, (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName,
                        http_errors.ConfigurationProblem)):
        # The app's or the operator's fault, not the client's.
        return 500, "Internal Server Error", "internal_error", "internal error"
    for kind, status, reason, code in _REFUSALS:
        if isinstance(exc, kind):
            return status, reason, code, _message(exc)
    return 500, "Internal Server Error", "internal_error", "internal error"


def _message(exc: BaseException) -> str:
    text = str(exc)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "..."
    return text


def error_bytes(status: int, reason: str, code: str, message: str) -> bytes:
    """Return a whole HTTP/1.1 response carrying the registry's JSON error body; it closes."""
    body = json.dumps({"error": message, "code": code, "details": {}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


class JsonErrors:
    """Mixin for a gunicorn worker: refuse unparseable requests in JSON, not HTML."""

    log: Any

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Log the error as gunicorn does and answer it with the registry's JSON body."""
        status, reason, code, message = classify(exc)
        ip = (addr or ("", -1))[0]  # a unix socket has no address
        if code != "internal_error":
            self.log.warning("Invalid request from ip=%s: %s", ip, exc)
        else:
            self.log.exception("Error handling request", exc_info=exc)
        try:
            util.write_nonblock(client, error_bytes(status, reason, code, message))
        except Exception:
            self.log.debug("Failed to send error message.")


class JsonGeventWorker(JsonErrors, GeventWorker):
    """gunicorn's gevent worker with JSON refusals."""


class JsonThreadWorker(JsonErrors, ThreadWorker):
    """gunicorn's gthread worker with JSON refusals."""


class JsonSyncWorker(JsonErrors, SyncWorker):
    """gunicorn's sync worker with JSON refusals."""

