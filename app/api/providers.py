"""HTTP routes of providers: registration, heartbeats, details, queries, deregistration."""
from __future__ import annotations

import logging
import uuid
from typing import Iterator
from urllib.parse import urlencode

import orjson
from flask import Blueprint, Response, g, jsonify, request, url_for

from ..auth import provider_token_hash, registration, requires
from ..errors import StoreUnavailable, ValidationFailed
from ..idempotency import idempotent
from ..models import Filters, Page
from ..registry import current_registry
from ..schemas import HeartbeatSchema, ListQuerySchema, ProviderDetailsSchema, RegisterSchema
from ..store import ProviderStore
from ..store.idempotency import fresh_uuid
from .conditional import if_match_versions
from .filters import decode_cursor, encode_cursor, filters_from
from .parsing import json_body, query_args

log = logging.getLogger(__name__)
bp = Blueprint("providers", __name__)
# Providers read from Redis at once while a listing without `limit` streams every match.
STREAM_CHUNK = 500
# Schemas hold no request state: one instance each serves every request.
REGISTER, HEARTBEAT = RegisterSchema(), HeartbeatSchema()
DETAILS, LIST_QUERY = ProviderDetailsSchema(), ListQuerySchema()


def _location(provider_id: str) -> str:
    return url_for(".get_provider", provider_id=uuid.UUID(provider_id))


def _same_id(body_id: str | None, provider_id: uuid.UUID, field: str) -> None:
    """Refuse a body that names another provider than the path."""
    if body_id is not None and body_id != str(provider_id):
        raise ValidationFailed(
            "invalid request body", details={field: ["Must be the provider ID of the path."]}
        )


@bp.post("/providers")
@requires("register", provider=True)
@idempotent
def register_provider() -> tuple[Response, int, dict[str, str]]:
    """Register a provider, or refresh the one whose `id` the daemon kept."""
    registry = current_registry()
    data = json_body(REGISTER)
    given_id = data.pop("id", None)
    provider_id = given_id or fresh_uuid("provider_id")
    status = data.pop("status", None) or "idle"
    auth = registration(id_given=given_id is not None)
    provider, created, now = registry.store.register(
        provider_id, data, status, auth.token_hash, auth.expected
    )
    body = provider.to_json(now) | registry.rhythm()
    if auth.issued(created):
        body["provider_token"] = auth.token
    headers = {"Location": _location(provider.id), "ETag": provider.etag}
    return jsonify(body), (201 if created else 200), headers


@bp.route("/providers/<uuid:provider_id>/status", methods=["PUT", "PATCH"])
@bp.post("/providers/<uuid:provider_id>/heartbeat")
@requires("schedule", provider=True)
@idempotent
def heartbeat(provider_id: uuid.UUID) -> tuple[Response, int, dict[str, str]]:
    """Renew the lease; optionally set the status and report live GPU metrics."""
    registry = current_registry()
    data = json_body(HEARTBEAT, optional=True)
    _same_id(data.get("provider_id"), provider_id, "provider_id")
    if "timestamp" in data:
        g.log_fields = {"client_timestamp": data["timestamp"]}
    lease = registry.store.heartbeat(
        str(provider_id), data.get("status"), data.get("gpu_metrics"), if_match_versions(),
        provider_token_hash(),
    )
    return jsonify(lease.to_json() | registry.rhythm()), 200, {"ETag": lease.etag}


@bp.put("/providers/<uuid:provider_id>")
@requires(provider=True)
@idempotent
def update_provider(provider_id: uuid.UUID) -> tuple[Response, int, dict[str, str]]:
    """Replace a provider's details; status and lease are untouched."""
    data = json_body(DETAILS)
    _same_id(data.pop("id", None), provider_id, "id")
    provider, now = current_registry().store.update(
        str(provider_id), data, if_match_versions(), provider_token_hash()
    )
    return jsonify(provider.to_json(now)), 200, {"ETag": provider.etag}


@bp.get("/providers/<uuid:provider_id>")
@requires("read", provider=True)
def get_provider(provider_id: uuid.UUID) -> tuple[Response, int, dict[str, str]]:
    """Return a provider with its effective status, lease deadline and version (ETag)."""
    provider, now = current_registry().store.get(str(provider_id), provider_token_hash())
    return jsonify(provider.to_json(now)), 200, {"ETag": provider.etag}


@bp.delete("/providers/<uuid:provider_id>")
@requires(provider=True)
@idempotent
def delete_provider(provider_id: uuid.UUID) -> tuple[str, int]:
    """Deregister a provider."""
    current_registry().store.delete(str(provider_id), if_match_versions(), provider_token_hash())
    return "", 204


@bp.get("/providers")
@requires("read")
def list_providers() -> tuple[Response, int, dict[str, str]]:
    """List providers that match the filters: every one, or one page with `limit`."""
    args = query_args(LIST_QUERY, repeatable=("status",))
    filters = filters_from(args, statuses=tuple(dict.fromkeys(args["status"])))
    cursor = decode_cursor(args["cursor"], bool(filters.sort)) if "cursor" in args else None
    store = current_registry().store
    if "limit" not in args:
        first = store.query(filters, STREAM_CHUNK, cursor)
        body = _every_match(store, filters, first)
        return Response(body, mimetype="application/json"), 200, {"X-Total-Count": str(first.total)}
    page = store.query(filters, args["limit"], cursor)
    headers = {"X-Total-Count": str(page.total)}
    if page.next_cursor:
        headers["Link"] = f'<{_page_url(encode_cursor(page.next_cursor))}>; rel="next"'
    return jsonify([p.to_json(page.now_ms) for p in page.providers]), 200, headers


def _every_match(store: ProviderStore, filters: Filters, page: Page) -> Iterator[bytes]:
    """Write one JSON array of every match, reading it from Redis a chunk at a time.

    The worker holds one chunk at once, whatever the fleet's size. Chunks follow each other
    like pages: none repeats or skips a provider. A store failure mid-way cuts the answer
    short, which a client sees as JSON that does not parse.
    """
    yield b"["
    separator = b""
    while True:
        if page.providers:
            yield separator + b",".join(orjson.dumps(p.to_json(page.now_ms)) for p in page.providers)
            separator = b","
        if page.next_cursor is None:
            break
        try:
            page = store.query(filters, STREAM_CHUNK, page.next_cursor)
        except StoreUnavailable:
            log.warning("listing cut short: store unavailable")
            raise
    yield b"]"


def _page_url(cursor: str) -> str:
    params = [(k, v) for k, v in request.args.items(multi=True) if k != "cursor"]
    return f"{request.path}?{urlencode([*params, ('cursor', cursor)])}"
