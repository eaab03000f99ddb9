"""HTTP route of capacity at a glance."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..auth import requires
from ..registry import current_registry

bp = Blueprint("summary", __name__)


@bp.get("/providers/summary")
@requires("read")
def summary() -> Response:
    """Return providers by effective status, and GPUs and VRAM by model and location."""
    return jsonify(current_registry().capacity.summary())
