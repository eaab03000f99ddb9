"""The `Idempotency-Key` header: a retried write returns the first attempt's answer.

A view opts in with one line, `@idempotent`, under `@requires` (the key is scoped by the
caller's credential). Without the header a request runs as before. With it:

1. the key is reserved in Redis before the write (`pending`, owned by this attempt);
2. the write's script runs fenced: only while this attempt owns the key, and it records its
   own reply in the same script (`ran`), so a write and its record never diverge;
3. the HTTP answer is stored (`done`) and replayed to any retry within the window.

A retry that finds `ran` (the first attempt's answer was lost: a timeout, a dead worker)
rebuilds the answer from the stored reply without writing again. One that finds `pending`
past the in-flight bound takes the key over: the first attempt's write, should it still
reach Redis, finds another owner and does nothing. See README "Idempotent writes" and
docs/RELIABILITY.md for the guarantee and its limits.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
import time
from typing import Any, Callable, TypeVar

from flask import Response, current_app, request
from werkzeug.exceptions import HTTPException

from .auth import current_principal, presented_hash
from .errors import (
    IdempotencyInProgress,
    IdempotencyKeyReused,
    RegistryError,
    StoreTimeout,
    StoreUnavailable,
    ValidationFailed,
)
from .registry import current_registry
from .store.idempotency import Attempt, bind, derive_seed, fresh_token, unbind

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
_VALID_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")
# Headers that are part of an answer, replayed with it.
KEPT_HEADERS = ("Location", "ETag", "Cache-Control", "Retry-After", "WWW-Authenticate")
TOKEN_FIELD = "provider_token"

F = TypeVar("F", bound=Callable[..., Any])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _credential() -> tuple[str, str]:
    """Return who the caller is (a digest, never the secret) and the secret itself."""
    if current_principal().kind == "trusted":
        return "trusted", ""
    header = request.headers.get("Authorization", "")
    return presented_hash() or "", header.strip().partition(" ")[2].strip()


def _answer_of(response: Response) -> dict[str, Any]:
    """Return what a retry is answered: status, kept headers, body; never a raw token."""
    answer: dict[str, Any] = {
        "status": response.status_code,
        "mimetype": response.mimetype,
        "headers": {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers},
    }
    body = response.get_data(as_text=True)
    if response.is_json and body:
        data = json.loads(body)
        # The token is derived again from the caller's credential on replay (fresh_token):
        # Redis never holds it, nor anything that yields it without the credential.
        if isinstance(data, dict) and data.pop(TOKEN_FIELD, None) is not None:
            answer["token"] = True
        answer["json"] = data
    else:
        answer["body"] = body
    return answer


def _replay(answer: dict[str, Any]) -> Response:
    """Build the stored answer again, marked as a replay."""
    if "json" in answer:
        data = answer["json"]
        if answer.get("token"):
            data[TOKEN_FIELD] = fresh_token()
        response = current_app.json.response(data)
    else:
        response = Response(answer["body"], mimetype=answer["mimetype"])
    response.status_code = answer["status"]
    response.headers.update(answer["headers"])
    response.headers["Idempotent-Replayed"] = "true"
    # A replay may carry a token, and no cache should keep the answer to a write anyway.
    response.headers["Cache-Control"] = "no-store"
    return response


def _run(view: Callable[..., Any], args: Any, kwargs: Any) -> Response | None:
    """Run the view; return its answer, or None when no answer must be recorded (re-raised)."""
    try:
        return current_app.make_response(view(*args, **kwargs))
    except (RegistryError, HTTPException) as exc:
        status = exc.status if isinstance(exc, RegistryError) else (exc.code or 500)
        if status >= 500:
            raise
        return current_app.make_response(current_app.handle_user_exception(exc))


def idempotent(view: F) -> F:
    """Honour `Idempotency-Key` on a write view (place it under `@requires`).

    Raises:
        ValidationFailed: a key that is not 1 to 255 printable ASCII characters.
        IdempotencyKeyReused: the key was used with another body.
        IdempotencyInProgress: an attempt with the key is still running.
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        if not _VALID_KEY.match(key):
            raise ValidationFailed(
                f"invalid {HEADER} header", details={HEADER: ["Must be 1 to 255 printable ASCII characters."]}
            )
        identity, secret = _credential()
        scope = _sha256(f"{identity}\n{request.method}\n{request.path}\n{key}".encode())
        fingerprint = _sha256(request.get_data(cache=True))
        store = current_registry().idempotency
        owner, begun = store.begin(scope, fingerprint)
        record = begun.record
        if begun.outcome == "mismatch":
            raise IdempotencyKeyReused(
                f"this {HEADER} was used with another request body; use a new key for a new request"
            )
        if begun.outcome == "busy":
            wait_s = max(1, math.ceil((record["u"] - time.time() * 1000) / 1000))
            raise IdempotencyInProgress(f"a request with this {HEADER} is still in progress", wait_s)
        attempt = Attempt(
            store, store.keys.idempotency(scope), owner, derive_seed(secret, record["n"]),
            replay=record.get("r") if begun.outcome == "ran" else None,
        )
        token = bind(attempt)
        try:
            if begun.outcome == "done":
                return _replay(record["a"])
            response = _run(view, args, kwargs)
        except StoreTimeout:
            raise  # the write may still run: the reservation stays, fenced, for the retry
        except Exception:
            # Drops only a reservation whose write never ran; a write that ran keeps its reply.
            _abandon(store, scope, owner)
            raise
        finally:
            unbind(token)
        try:
            store.record_answer(scope, owner, _answer_of(response))
        except StoreUnavailable:
            # The write's reply is recorded with it: a retry rebuilds this same answer.
            log.info("idempotency: answer not recorded", extra={"status": response.status_code})
        if begun.outcome == "ran":
            response.headers["Idempotent-Replayed"] = "true"
        return response

    wrapper.accepts_idempotency_key = True  # type: ignore[attr-defined]  # read by the OpenAPI builder
    return wrapper  # type: ignore[return-value]


def _abandon(store: Any, scope: str, owner: str) -> None:
    try:
        store.abandon(scope, owner)
    except StoreUnavailable:
        pass  # the reservation lapses after its in-flight bound; a retry then takes it over
