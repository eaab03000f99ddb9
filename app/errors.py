"""Domain exceptions, and the one place that turns any error into a JSON response."""
from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect, UUIDConverter

log = logging.getLogger(__name__)


class RegistryError(Exception):
    """Base of every error the API reports; carries its HTTP status and machine code."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class ValidationFailed(RegistryError):
    status = 400
    code = "validation_error"


class MalformedJSON(RegistryError):
    status = 400
    code = "malformed_json"


class MalformedBody(RegistryError):
    """The body's framing is broken (a bad chunk size or terminator); the connection closes."""

    status = 400
    code = "malformed_body"


class RequestTimeout(RegistryError):
    """The body did not arrive within `body_timeout_s`; the connection closes."""

    status = 408
    code = "request_timeout"


class UnsupportedMediaType(RegistryError):
    status = 415
    code = "unsupported_media_type"


class ProviderNotFound(RegistryError):
    status = 404
    code = "provider_not_found"

    def __init__(self, provider_id: str) -> None:
        super().__init__(f"provider {provider_id} is not registered")
        self.provider_id = provider_id


class VersionMismatch(RegistryError):
    """`If-Match` named a version the provider no longer has; nothing changed."""

    status = 412
    code = "version_mismatch"

    def __init__(self, current_version: int) -> None:
        super().__init__(
            f"the provider's version is {current_version}, not the one If-Match names",
            details={"version": current_version},
            headers={"ETag": f'"{current_version}"'},
        )


class ClaimMismatch(RegistryError):
    """The claim ID is not the provider's current claim."""

    status = 409
    code = "claim_mismatch"


class NoCapacity(RegistryError):
    """Fewer free providers match than the claim asks for; nothing was claimed."""

    status = 409
    code = "no_capacity"


AUTH_REALM = "provider-registry"


class Unauthorized(RegistryError):
    """No credential, or one that is not valid here; says how to authenticate (RFC 6750)."""

    status = 401
    code = "unauthorized"

    def __init__(
        self, message: str, *, invalid: bool = False, details: dict[str, Any] | None = None
    ) -> None:
        challenge = f'Bearer realm="{AUTH_REALM}"'
        if invalid:
            challenge += ', error="invalid_token"'
        super().__init__(message, details=details, headers={"WWW-Authenticate": challenge})


class Forbidden(RegistryError):
    """A valid credential that lacks the role or the provider the request needs."""

    status = 403
    code = "forbidden"


class StoreUnavailable(RegistryError):
    """Redis could not be reached: the command was never sent, so nothing was applied."""

    status = 503
    code = "store_unavailable"
    retry_after_s = 1

    def __init__(
        self, message: str = "the registry's store is unavailable; nothing was applied, retry shortly"
    ) -> None:
        super().__init__(message, headers={"Retry-After": str(self.retry_after_s)})


class StoreTimeout(StoreUnavailable):
    """Redis did not answer after the command was sent: a write may have been applied."""

    code = "store_timeout"

    def __init__(
        self,
        message: str = (
            "the registry's store did not answer in time; a write may have been applied: "
            "retry with the same Idempotency-Key to learn its outcome"
        ),
    ) -> None:
        super().__init__(message)


class IdempotencyKeyReused(RegistryError):
    """The Idempotency-Key was first used with another request body."""

    status = 422
    code = "idempotency_key_reused"


class IdempotencyInProgress(RegistryError):
    """An earlier attempt with this Idempotency-Key has not finished yet."""

    status = 409
    code = "idempotency_in_progress"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class RateLimited(RegistryError):
    """Past a rate limit: nothing was done, and the request did not count."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> tuple[Any, int]:
    """Build the JSON error body every failure uses; `details` is always an object."""
    g.error_code = code  # for the request metrics (app/metrics.py): refusals by reason
    return jsonify(error_body(code, message, details)), status


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the JSON object of an error answer (the heartbeat's fast path writes it too)."""
    # One shape for every error, so that clients decode it without checking for the key.
    return {"error": message, "code": code, "details": details or {}}


# A path that names a provider: /providers/<id>[/...], at the root or under /api/v1.
_PROVIDER_PATH = re.compile(r"^((?:/api/v1)?/providers/)([^/]+)(/.*)?$")
_UUID = re.compile(UUIDConverter.regex)
_ANY_ID = "00000000-0000-0000-0000-000000000000"


def malformed_provider_id() -> str | None:
    """Return the path's provider ID when it is not a UUID but a UUID there would match a route.

    Called on a 404 only: the route's `uuid` converter refused the segment, so Werkzeug knows
    no more than "not found"; trying the same path with a UUID in its place tells the cases apart.
    """
    found = _PROVIDER_PATH.match(request.path)
    if found is None or _UUID.fullmatch(found.group(2)):
        return None
    probe = f"{found.group(1)}{_ANY_ID}{found.group(3) or ''}"
    adapter = current_app.create_url_adapter(request)
    if adapter is None:
        return None
    try:
        adapter.match(probe, method=request.method)
    except MethodNotAllowed:
        return found.group(2)  # a route exists there, for other methods
    except (NotFound, RequestRedirect):
        return None
    return found.group(2)


def _http_code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")


def register_error_handlers(app: Flask) -> None:
    """Map every exception to a JSON body; never an HTML page, never a bare 500."""

    @app.errorhandler(RegistryError)
    def _registry_error(exc: RegistryError):  # type: ignore[no-untyped-def]
        response, status = error_response(exc.status, exc.code, exc.message, exc.details)
        response.headers.update(exc.headers)
        return response, status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        status = exc.code or 500
        message = exc.description or exc.name
        code = _http_code(exc)
        if status == 413:
            message = f"request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        if status == 404 and (given := malformed_provider_id()) is not None:
            code = ProviderNotFound.code
            message = (
                f"no provider has ID {given[:64]!r}: provider IDs are UUIDs "
                "(such as 3f2b8c1e-5d4a-4e6b-9c7d-1a2b3c4d5e6f)"
            )
        response, status = error_response(status, code, message)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled error", extra={"error": repr(exc)})
        return error_response(500, "internal_error", "internal error")
