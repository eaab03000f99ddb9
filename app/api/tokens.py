"""Provider token rotation: a daemon (or an admin) swaps the provider's token for a new one."""
from __future__ import annotations

import uuid

from flask import Blueprint, Response, jsonify

from ..auth import hash_secret, new_token, provider_token_hash, requires
from ..registry import current_registry

bp = Blueprint("tokens", __name__)


@bp.post("/providers/<uuid:provider_id>/token")
@requires(provider=True)
def rotate_token(provider_id: uuid.UUID) -> tuple[Response, int, dict[str, str]]:
    """Issue a new token for the provider; the old one stops working at once."""
    token = new_token()
    current_registry().store.rotate_token(str(provider_id), hash_secret(token), provider_token_hash())
    body = {"provider_id": str(provider_id), "provider_token": token}
    return jsonify(body), 200, {"Cache-Control": "no-store"}
