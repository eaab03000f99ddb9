"""The heartbeat's fast path: a WSGI dispatcher in front of Flask for the hot route.

Heartbeats are most of the registry's traffic (one per provider every 10 to 15 s). A
daemon's heartbeat that needs nothing but the common case is answered here, without Flask's
contexts, routing and hooks; every other request, and every heartbeat that is not plainly
accepted, goes to Flask untouched (the body read here is handed over as it came).

Answered here: `POST .../heartbeat`, `PUT|PATCH .../status` (at the root and under /api/v1),
without a query string or an Idempotency-Key, with a body of at most MAX_BODY_BYTES that is
empty or JSON that HeartbeatSchema accepts, naming the path's provider, from a provider
token (a bearer that is no service key), or from anyone with auth off when rate limits are
off (with auth off, flask-limiter limits per address). The checks are the view's own: the
same schema, If-Match parsing, token check and heartbeat limit (both inside the store's one
FUNCTION call), the same answer, headers and JSON access line.

Handed to Flask, which answers them as on every route: service keys (roles, per-key limit),
missing or malformed credentials, bodies that do not parse or validate (400, 413, 415, with
the token checked first), and every refusal of the store except an outage: 401 (the
address's bad-credential bucket), 404, 412, 429. Flask runs the heartbeat again for those;
a refused heartbeat wrote nothing, so the second call decides alone. A store outage (503) is
answered here with the JSON error every route answers: sending the write again could only
double the wait.
"""
from __future__ import annotations

import io
import logging
import re
import time
import uuid
from typing import Any, Callable, Iterable

import orjson
from flask import Flask
from marshmallow import ValidationError

from . import MAX_BODY_BYTES
from .api.conditional import versions_from
from .auth import KEYRING_EXTENSION, MAX_CREDENTIAL_CHARS
from .errors import MalformedBody, RequestTimeout, StoreUnavailable, error_body
from .keyring import hash_secret
from .logs import access_log, log_request, request_id_from
from .metrics import request_done
from .registry import EXTENSION
from .schemas import HeartbeatSchema

log = logging.getLogger(__name__)

# Flask's routes of the heartbeat view, with werkzeug's UUID converter's pattern.
_ROUTE = re.compile(
    r"^(?:/api/v1)?/providers/([A-Fa-f0-9]{8}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{12})"
    r"/(heartbeat|status)$"
)
_METHODS = {"heartbeat": ("POST",), "status": ("PUT", "PATCH")}
_JSON_TYPE = re.compile(r"^application/(?:[^;\s]+\+)?json\s*(?:;|$)", re.IGNORECASE)
HEARTBEAT = HeartbeatSchema()

StartResponse = Callable[..., Any]


class Handover(Exception):
    """This request is Flask's to answer."""


class HeartbeatFastPath:
    """WSGI middleware: answer plain heartbeats, hand everything else to the wrapped app."""

    def __init__(self, app: Flask, wrapped: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self.wrapped = wrapped
        self.registry = app.extensions[EXTENSION]
        self.ring = app.extensions[KEYRING_EXTENSION]
        settings = self.registry.settings
        # With auth off, flask-limiter limits every request per address: Flask's to count.
        self.trusted_ok = not settings.rate_limit_enabled

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        match = _ROUTE.match(environ.get("PATH_INFO", ""))
        if (
            match is None
            or environ.get("REQUEST_METHOD") not in _METHODS[match.group(2)]
            or environ.get("QUERY_STRING")
            or "HTTP_IDEMPOTENCY_KEY" in environ
        ):
            return self.wrapped(environ, start_response)
        started = time.perf_counter()
        try:
            return self._heartbeat(environ, start_response, str(uuid.UUID(match.group(1))), started)
        except Handover:
            return self.wrapped(environ, start_response)

    def _token_hash(self, environ: dict[str, Any]) -> str:
        """Return the provider token's hash ("" with auth off), as auth.presented_hash reads it."""
        if not self.ring.enabled:
            if self.trusted_ok:
                return ""
            raise Handover
        header = environ.get("HTTP_AUTHORIZATION")
        if header is None:
            raise Handover
        scheme, _, secret = header.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret or len(secret) > MAX_CREDENTIAL_CHARS:
            raise Handover
        digest = hash_secret(secret)
        if self.ring.match(digest) is not None:
            raise Handover  # a service key: roles and its per-key limit are Flask's
        return digest

    def _body(self, environ: dict[str, Any], provider_id: str) -> dict[str, Any]:
        """Read and validate the body as json_body(HEARTBEAT, optional=True) would, or hand over."""
        length = environ.get("CONTENT_LENGTH")
        if not length:
            if environ.get("HTTP_TRANSFER_ENCODING"):
                raise Handover  # chunked: Flask bounds it
            raw = b""
        else:
            try:
                size = int(length)
            except ValueError:
                raise Handover from None
            if not 0 <= size <= MAX_BODY_BYTES:
                raise Handover
            raw = environ["wsgi.input"].read(size)
            # Flask reads the body again if it takes the request over.
            environ["wsgi.input"] = io.BytesIO(raw)
            if len(raw) != size:
                raise Handover
        try:
            if not raw.strip():
                data = HEARTBEAT.load({})
            elif not _JSON_TYPE.match(environ.get("CONTENT_TYPE", "")):
                raise Handover
            else:
                loaded = orjson.loads(raw)
                if not isinstance(loaded, dict):
                    raise Handover
                data = HEARTBEAT.load(loaded)
        except (orjson.JSONDecodeError, ValidationError):
            raise Handover from None
        if data.get("provider_id") not in (None, provider_id):
            raise Handover
        return data

    def _heartbeat(
        self, environ: dict[str, Any], start_response: StartResponse, provider_id: str, started: float
    ) -> Iterable[bytes]:
        token_hash = self._token_hash(environ)
        request_id = request_id_from(environ.get("HTTP_X_REQUEST_ID"))
        try:
            data = self._body(environ, provider_id)
        except (RequestTimeout, MalformedBody) as exc:
            # The body is spent: no one could read it again (app/body.py closes the connection).
            return self._answer(
                environ, start_response, exc.status, error_body(exc.code, exc.message, exc.details),
                exc.headers, request_id, started, {},
            )
        fields = {"client_timestamp": data["timestamp"]} if "timestamp" in data else {}
        try:
            lease = self.registry.store.heartbeat(
                provider_id, data.get("status"), data.get("gpu_metrics"),
                versions_from(environ.get("HTTP_IF_MATCH")), token_hash,
            )
        except StoreUnavailable as exc:
            return self._answer(
                environ, start_response, exc.status, error_body(exc.code, exc.message, exc.details),
                exc.headers, request_id, started, fields,
            )
        except Exception:
            # Every refusal (and any surprise) is answered by Flask, as on every route.
            raise Handover from None
        return self._answer(
            environ, start_response, 200, lease.to_json() | self.registry.rhythm(),
            {"ETag": lease.etag}, request_id, started, fields,
        )

    def _answer(
        self, environ: dict[str, Any], start_response: StartResponse, status: int,
        body: dict[str, Any], headers: dict[str, str], request_id: str, started: float,
        fields: dict[str, Any],
    ) -> Iterable[bytes]:
        payload = orjson.dumps(body)
        start_response(
            f"{status} {_REASONS[status]}",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                *headers.items(),
                ("X-Request-ID", request_id),
            ],
        )
        elapsed_s = time.perf_counter() - started
        path = environ.get("PATH_INFO", "")
        if access_log.isEnabledFor(logging.INFO):
            log_request(request_id, environ["REQUEST_METHOD"], path, status, elapsed_s * 1000, fields)
        request_done(
            _rule_of(path), environ["REQUEST_METHOD"], status, elapsed_s, heartbeat=True,
            error_code=body.get("code") if status >= 400 else None,
        )
        return [payload]


def _rule_of(path: str) -> str:
    """Return the Flask rule a heartbeat path matches, as the request metrics label it."""
    prefix = "/api/v1" if path.startswith("/api/v1/") else ""
    return f"{prefix}/providers/<uuid:provider_id>/{path.rsplit('/', 1)[1]}"


_REASONS = {200: "OK", 400: "BAD REQUEST", 408: "REQUEST TIMEOUT", 503: "SERVICE UNAVAILABLE"}


def install_fast_path(app: Flask) -> None:
    """Put the heartbeat's fast path in front of the app's WSGI callable."""
    app.wsgi_app = HeartbeatFastPath(app, app.wsgi_app)  # type: ignore[method-assign]
