"""HTTP routes of providers: registration, heartbeats, details, queries, deregistration."""
from __future__ import annotations

import uuid
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, request, url_for

from ..models import Filters
from ..registry import current_registry
from ..schemas import HeartbeatSchema, ListQuerySchema, ProviderDetailsSchema, RegisterSchema
from .parsing import json_body, query_args

bp = Blueprint("providers", __name__)


def _location(provider_id: str) -> str:
    return url_for(".get_provider", provider_id=uuid.UUID(provider_id))


@bp.post("/providers")
def register_provider() -> tuple[Response, int, dict[str, str]]:
    """Register a provider, or refresh the one whose `id` the daemon kept."""
    registry = current_registry()
    data = json_body(RegisterSchema())
    provider_id = data.pop("id", None) or str(uuid.uuid4())
    status = data.pop("status", None) or "idle"
    provider, created, now = registry.store.register(provider_id, data, status)
    body = provider.to_json(now) | registry.rhythm()
    return jsonify(body), (201 if created else 200), {"Location": _location(provider.id)}


@bp.route("/providers/<uuid:provider_id>/status", methods=["PUT", "PATCH"])
@bp.post("/providers/<uuid:provider_id>/heartbeat")
def heartbeat(provider_id: uuid.UUID) -> Response:
    """Renew the lease; optionally set the status and report live GPU metrics."""
    registry = current_registry()
    data = json_body(HeartbeatSchema(), optional=True)
    provider, _, now = registry.store.heartbeat(
        str(provider_id), data.get("status"), data.get("gpu_metrics")
    )
    return jsonify(provider.to_json(now) | registry.rhythm())


@bp.put("/providers/<uuid:provider_id>")
def update_provider(provider_id: uuid.UUID) -> Response:
    """Replace a provider's details; status and lease are untouched."""
    data = json_body(ProviderDetailsSchema())
    provider, now = current_registry().store.update(str(provider_id), data)
    return jsonify(provider.to_json(now))


@bp.get("/providers/<uuid:provider_id>")
def get_provider(provider_id: uuid.UUID) -> Response:
    """Return a provider with its effective status and lease deadline."""
    provider, now = current_registry().store.get(str(provider_id))
    return jsonify(provider.to_json(now))


@bp.delete("/providers/<uuid:provider_id>")
def delete_provider(provider_id: uuid.UUID) -> tuple[str, int]:
    """Deregister a provider."""
    current_registry().store.delete(str(provider_id))
    return "", 204


@bp.get("/providers")
def list_providers() -> tuple[Response, int, dict[str, str]]:
    """List providers that match the filters, in ID order, one page at a time."""
    args = query_args(ListQuerySchema(), repeatable=("status",))
    filters = Filters(
        gpu_model=args.get("gpu_model"),
        min_vram=args.get("min_vram"),
        min_gpus=args["min_gpus"],
        architecture=args.get("architecture"),
        healthy_only=args["healthy_only"],
        statuses=tuple(dict.fromkeys(args["status"])),
        location=args.get("location"),
    )
    cursor = str(args["cursor"]) if "cursor" in args else None
    page = current_registry().store.query(filters, args["limit"], cursor)
    headers = {"X-Total-Count": str(page.total)}
    if page.next_cursor:
        headers["Link"] = f'<{_page_url(page.next_cursor)}>; rel="next"'
    return jsonify([p.to_json(page.now_ms) for p in page.providers]), 200, headers


def _page_url(cursor: str) -> str:
    params = [(k, v) for k, v in request.args.items(multi=True) if k != "cursor"]
    return f"{request.path}?{urlencode([*params, ('cursor', cursor)])}"
