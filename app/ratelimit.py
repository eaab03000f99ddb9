"""Rate limits in three buckets that never share (flask-limiter, limits, and the heartbeat script).

- a valid service key: per key (`rate_limit_per_client`);
- a provider token: per provider only (`rate_limit_heartbeat` on its heartbeats, and
  `rate_limit_per_client` per token on its other requests), counting accepted requests only;
- no credential or an invalid one: per address (`rate_limit_unauthenticated`), counting 401
  answers, and checked before any other work.

Heartbeats are the hot path and cost one Redis round trip: the per-provider heartbeat limit
is counted inside heartbeat.lua, in the provider's own hash (`heartbeat_windows`), by the same
call that checks the token and renews the lease; a refused heartbeat writes nothing, so it does
not count. Every route with a heartbeat view (any credential, or none with auth off) goes
through it; flask-limiter has no heartbeat limit.

A bearer that is not a service key may be a provider token, which only the store can check
(inside the write's script). On a route that takes one it therefore costs nothing before the
view: only when the store refuses it (401) is the address bucket read, and the answer is then
429 if the address is over its limit, else the 401, counted. So a flood of bad credentials
from a daemon's address cannot starve the daemon, and a valid token never pays for the
address bucket.

Counters live in the registry's Redis (flask-limiter's under `<key_prefix>ratelimit:`), so
every instance shares them. A breach answers 429 with `Retry-After`, through the app's JSON
error handler.
"""
from __future__ import annotations

import functools
import math
import time
from typing import TYPE_CHECKING, Any

import logging

import redis
from flask import Flask, Response, current_app, g, request
from flask_limiter import Limit, Limiter, RateLimitExceeded
from limits import RateLimitItem, parse
from limits.errors import StorageError

from .auth import KEYRING_EXTENSION, client_identity, presented_hash
from .errors import Unauthorized, error_response

if TYPE_CHECKING:
    from .config import Settings
    from .store import Keys

LIMITER_EXTENSION = "provider_registry_limiter"
# Never limited: load balancers and Consul poll health; the contract is static.
EXEMPT_ENDPOINTS = frozenset({"health.health", "contract.openapi", "contract.docs"})


log = logging.getLogger(__name__)
UNAUTHENTICATED = "unauthenticated"


def credential_kind() -> str:
    """Classify the request's credential: trusted, key, candidate (maybe a token), none, invalid."""
    if "credential_kind" not in g:
        ring = current_app.extensions[KEYRING_EXTENSION]
        try:
            digest = presented_hash()
        except Unauthorized:
            digest = ""
        if not ring.enabled:
            kind = "trusted"
        elif digest is None:
            kind = "none"
        elif not digest:
            kind = "invalid"
        else:
            kind = "key" if ring.match(digest) else "candidate"
        g.credential_kind = kind
    return g.credential_kind


def _accepts_token() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, "accepts_provider_token", False))


def _not_a_key() -> bool:
    return credential_kind() not in ("key", "trusted")


def _is_token_request() -> bool:
    return credential_kind() == "candidate" and _accepts_token()


def _is_heartbeat() -> bool:
    # The heartbeat and status routes share one view, named `heartbeat` in every blueprint.
    return (request.endpoint or "").rsplit(".", 1)[-1] == "heartbeat"


def _succeeded(response: Response) -> bool:
    # Only accepted requests count: requests with a forged token cannot use up a token's
    # allowance and starve its real daemon.
    return response.status_code < 400


def _refusal(limiter: Limiter, exc: RateLimitExceeded) -> tuple[Response, int]:
    # Only a refusal pays the round trip that reads the window's end.
    reset_at = limiter.current_limit.reset_at if limiter.current_limit else time.time() + 1
    response, status = error_response(429, "too_many_requests", exc.description or "too many requests")
    response.headers["Retry-After"] = str(max(1, math.ceil(reset_at - time.time())))
    return response, status


def _install_unauthenticated_bucket(app: Flask, limiter: Limiter, item: RateLimitItem) -> None:
    """Limit per address the requests without a valid credential, by their 401 answers."""

    def address() -> str:
        return request.remote_addr or "unknown"

    def over_limit() -> int | None:
        """Return the seconds until the address may try again, or None when it may now."""
        try:
            if limiter.limiter.test(item, UNAUTHENTICATED, address()):
                return None
            reset_at = limiter.limiter.get_window_stats(item, UNAUTHENTICATED, address()).reset_time
        except (redis.RedisError, StorageError):
            return None  # a Redis outage must not turn into 500s; the store answers 503
        return max(1, math.ceil(reset_at - time.time()))

    def refusal(retry_after_s: int) -> tuple[Response, int]:
        response, status = error_response(
            429, "too_many_requests",
            f"too many requests without a valid credential from this address (limit {item})",
        )
        response.headers["Retry-After"] = str(retry_after_s)
        return response, status

    @app.before_request
    def _refuse_flooding_address() -> tuple[Response, int] | None:
        # A possible provider token is judged by the store first (see the module).
        if request.endpoint in EXEMPT_ENDPOINTS or not _not_a_key() or _is_token_request():
            return None
        retry_after_s = over_limit()
        return None if retry_after_s is None else refusal(retry_after_s)

    @app.after_request
    def _count_refused_credentials(response: Response) -> Response:
        if response.status_code != 401 or not _not_a_key():
            return response
        if _is_token_request():
            retry_after_s = over_limit()
            if retry_after_s is not None:
                refused, status = refusal(retry_after_s)
                refused.status_code = status
                return refused
        try:
            limiter.limiter.hit(item, UNAUTHENTICATED, address())
        except (redis.RedisError, StorageError):
            log.debug("rate limit: bad credential not counted (store unavailable)")
        return response


def install_rate_limits(
    app: Flask, settings: Settings, keys: Keys, storage_uri: str, storage_options: dict[str, Any]
) -> Limiter | None:
    """Attach the limiter to the app, storing its counters in the registry's Redis.

    `storage_uri` and `storage_options` reach that Redis (app/connections.py): the registry's
    own pool for a single server, with its fail-fast timeouts and closed with the registry.
    """
    if not settings.rate_limit_enabled:
        return None
    limiter = Limiter(
        key_func=client_identity,
        default_limits=[
            Limit(
                settings.rate_limit_per_client,
                scope="client",
                shared=True,
                # Requests without a valid key have buckets of their own (see the module).
                exempt_when=lambda: credential_kind() not in ("key", "trusted"),
                error_message=f"too many requests from this client (limit {settings.rate_limit_per_client})",
            ),
            Limit(
                settings.rate_limit_per_client,
                key_function=lambda: f"token:{presented_hash()}",
                scope="token",
                shared=True,
                # Heartbeats have their own limit, counted by the heartbeat script.
                exempt_when=lambda: not _is_token_request() or _is_heartbeat(),
                deduct_when=_succeeded,
                error_message=f"too many requests with this provider token (limit {settings.rate_limit_per_client})",
            ),
        ],
        strategy="fixed-window",  # one round trip per check: the heartbeat path stays cheap
        storage_uri=storage_uri,
        storage_options={"key_prefix": keys.ratelimit_prefix, **storage_options},
        # X-RateLimit-* headers would cost one more Redis round trip on every request.
        headers_enabled=False,
        # A Redis outage must not turn into 500s: requests pass, and the store answers 503.
        swallow_errors=True,
    )
    limiter.request_filter(lambda: request.endpoint in EXEMPT_ENDPOINTS)
    if settings.auth_enabled:
        _install_unauthenticated_bucket(app, limiter, parse(settings.rate_limit_unauthenticated))
    limiter.init_app(app)
    app.register_error_handler(RateLimitExceeded, functools.partial(_refusal, limiter))
    app.extensions[LIMITER_EXTENSION] = limiter
    return limiter
