"""Liveness of the instance, as load balancers and Consul's check ask for it."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..errors import StoreUnavailable
from ..registry import current_registry

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> tuple[Response, int] | tuple[Response, int, dict[str, str]]:
    """Answer 200 when the instance can serve (Redis answers), 503 when it cannot."""
    registry = current_registry()
    try:
        registry.store.ping(registry.health_redis)
    except StoreUnavailable as exc:
        body = {"status": "unavailable", "redis": "unreachable", "version": registry.version}
        return jsonify(body), 503, {"Retry-After": str(exc.retry_after_s)}
    return jsonify({"status": "ok", "redis": "ok", "version": registry.version}), 200
