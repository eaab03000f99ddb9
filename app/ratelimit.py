"""Rate limits: requests per client, and accepted heartbeats per provider (flask-limiter).

Counters live in the registry's Redis under `<key_prefix>ratelimit:`, so every instance
shares them. A breach answers 429 with `Retry-After`, through the app's JSON error handler.
"""
from __future__ import annotations

import functools
import math
import time
from typing import TYPE_CHECKING

import redis
from flask import Flask, Response, request
from flask_limiter import Limit, Limiter, RateLimitExceeded

from .auth import client_identity
from .errors import error_response

if TYPE_CHECKING:
    from .config import Settings
    from .store import Keys

LIMITER_EXTENSION = "provider_registry_limiter"
# Never limited: load balancers and Consul poll health; the contract is static.
EXEMPT_ENDPOINTS = frozenset({"health.health", "contract.openapi", "contract.docs"})


def _is_heartbeat() -> bool:
    # The heartbeat and status routes share one view, named `heartbeat` in every blueprint.
    return (request.endpoint or "").rsplit(".", 1)[-1] == "heartbeat"


def _heartbeat_key() -> str:
    return f"provider:{(request.view_args or {}).get('provider_id')}"


def _succeeded(response: Response) -> bool:
    # Only accepted heartbeats count: requests with a forged token cannot use up a
    # provider's allowance and starve its real daemon.
    return response.status_code < 400


def _refusal(limiter: Limiter, exc: RateLimitExceeded) -> tuple[Response, int]:
    # Only a refusal pays the round trip that reads the window's end.
    reset_at = limiter.current_limit.reset_at if limiter.current_limit else time.time() + 1
    response, status = error_response(429, "too_many_requests", exc.description or "too many requests")
    response.headers["Retry-After"] = str(max(1, math.ceil(reset_at - time.time())))
    return response, status


def install_rate_limits(
    app: Flask, settings: Settings, keys: Keys, pool: redis.ConnectionPool
) -> Limiter | None:
    """Attach the limiter to the app, storing its counters in the registry's Redis."""
    if not settings.rate_limit_enabled:
        return None
    limiter = Limiter(
        key_func=client_identity,
        default_limits=[
            Limit(
                settings.rate_limit_per_client,
                scope="client",
                shared=True,
                error_message=f"too many requests from this client (limit {settings.rate_limit_per_client})",
            ),
            Limit(
                settings.rate_limit_heartbeat,
                key_function=_heartbeat_key,
                scope="heartbeat",
                shared=True,
                exempt_when=lambda: not _is_heartbeat(),
                deduct_when=_succeeded,
                error_message=f"too many heartbeats for this provider (limit {settings.rate_limit_heartbeat})",
            ),
        ],
        strategy="fixed-window",  # one round trip per check: the heartbeat path stays cheap
        storage_uri=settings.redis_url,
        storage_options={
            "key_prefix": keys.ratelimit_prefix,
            # The registry's own pool: its fail-fast timeouts, and closed with the registry.
            "connection_pool": pool,
        },
        # X-RateLimit-* headers would cost one more Redis round trip on every request.
        headers_enabled=False,
        # A Redis outage must not turn into 500s: requests pass, and the store answers 503.
        swallow_errors=True,
    )
    limiter.request_filter(lambda: request.endpoint in EXEMPT_ENDPOINTS)
    limiter.init_app(app)
    app.register_error_handler(RateLimitExceeded, functools.partial(_refusal, limiter))
    app.extensions[LIMITER_EXTENSION] = limiter
    return limiter
