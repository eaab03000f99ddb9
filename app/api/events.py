"""HTTP route of the change feed, with long polls."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..auth import requires
from ..registry import current_registry
from ..schemas import EventsQuerySchema
from .parsing import query_args

bp = Blueprint("events", __name__)
EVENTS_QUERY = EventsQuerySchema()


@bp.get("/providers/events")
@requires("read")
def events() -> Response:
    """Return the events after `after`, waiting up to `wait` seconds for one to come.

    Without `after`: no events, only the current position to ask from next.
    """
    args = query_args(EVENTS_QUERY)
    feed = current_registry().events
    if "after" not in args:
        return jsonify({"events": [], "next": feed.position()})
    batch = feed.read(args["after"], args["wait"])
    return jsonify({"events": batch.events, "next": batch.next, "truncated": batch.truncated})
