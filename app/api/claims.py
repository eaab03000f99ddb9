"""HTTP routes of claims: take providers atomically, then renew, confirm or release them."""
from __future__ import annotations

import uuid

from flask import Blueprint, Response, jsonify

from ..auth import provider_token_hash, requires
from ..idempotency import idempotent
from ..metrics import CLAIMS_GRANTED, CLAIMS_RELEASED
from ..models import Provider, rfc3339
from ..registry import current_registry
from ..schemas import ClaimIdSchema, ClaimSchema
from .filters import filters_from
from .parsing import json_body

bp = Blueprint("claims", __name__)
CLAIM, CLAIM_ID = ClaimSchema(), ClaimIdSchema()


@bp.post("/providers/claim")
@requires("schedule")
@idempotent
def claim() -> Response:
    """Claim `count` live, idle providers matching the filters, all or nothing."""
    data = json_body(CLAIM)
    granted = current_registry().claims.claim(
        filters_from(data), data["count"], data["claim_ttl_s"], data["claimant"]
    )
    CLAIMS_GRANTED.inc(len(granted.providers))
    return jsonify(
        {
            "claim_id": granted.claim_id,
            "expires_at": rfc3339(granted.expires_at_ms),
            "providers": [p.to_json(granted.now_ms) for p in granted.providers],
        }
    )


def _claim_reply(provider: Provider, now: int) -> tuple[Response, int, dict[str, str]]:
    return jsonify(provider.to_json(now)), 200, {"ETag": provider.etag}


@bp.post("/providers/<uuid:provider_id>/claim/renew")
@requires("schedule")
@idempotent
def renew(provider_id: uuid.UUID) -> tuple[Response, int, dict[str, str]]:
    """Extend an unconfirmed claim by its TTL."""
    claim_id = str(json_body(CLAIM_ID)["claim_id"])
    return _claim_reply(*current_registry().claims.renew(str(provider_id), claim_id))


@bp.post("/providers/<uuid:provider_id>/claim/confirm")
@requires("schedule")
@idempotent
def confirm(provider_id: uuid.UUID) -> tuple[Response, int, dict[str, str]]:
    """Confirm a claim: the job started; it lasts until released or the provider goes offline."""
    claim_id = str(json_body(CLAIM_ID)["claim_id"])
    return _claim_reply(*current_registry().claims.confirm(str(provider_id), claim_id))


@bp.post("/providers/<uuid:provider_id>/release")
@requires("schedule", provider=True)
@idempotent
def release(provider_id: uuid.UUID) -> tuple[Response, int, dict[str, str]]:
    """End a claim; the provider is idle again."""
    claim_id = str(json_body(CLAIM_ID)["claim_id"])
    released = current_registry().claims.release(str(provider_id), claim_id, provider_token_hash())
    CLAIMS_RELEASED.inc()
    return _claim_reply(*released)
