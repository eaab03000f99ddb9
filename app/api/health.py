"""Liveness of the instance, as load balancers and Consul's check ask for it."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..errors import StoreUnavailable
from ..registry import current_registry
from ..store.dataset import DataSet

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> tuple[Response, int] | tuple[Response, int, dict[str, str]]:
    """Answer 200 when the instance can serve (Redis answers), 503 when it cannot.

    `data` says whether Redis holds the data set the snapshots hold (see DataSet): a registry
    restoring after a data loss still serves, so it stays 200.
    """
    registry = current_registry()
    tracked = bool(registry.settings.database_url)
    try:
        data = DataSet(registry.store.keys).state(registry.health_redis, tracked)
    except StoreUnavailable as exc:
        body = {"status": "unavailable", "redis": "unreachable", "data": "unknown", "version": registry.version}
        return jsonify(body), 503, {"Retry-After": str(exc.retry_after_s)}
    return jsonify({"status": "ok", "redis": "ok", "data": data, "version": registry.version}), 200
