"""Bounds on what a request may carry beyond its body, checked before any view runs.

The body is bounded by MAX_CONTENT_LENGTH (413), each field by its schema, headers by
gunicorn (`limit_request_fields`, `limit_request_field_size`).
"""
from __future__ import annotations

from flask import Flask, request

from .errors import ValidationFailed

MAX_QUERY_BYTES = 2048
MAX_QUERY_PARAMS = 16  # values, counting repeats: ?status=idle&status=busy is two


def check_query_string() -> None:
    """Refuse a query string that is too long or has too many parameters, with a 400."""
    if len(request.query_string) > MAX_QUERY_BYTES:
        raise ValidationFailed(
            "invalid query parameters",
            details={"query": [f"Must be at most {MAX_QUERY_BYTES} bytes."]},
        )
    count = sum(len(values) for values in request.args.listvalues())
    if count > MAX_QUERY_PARAMS:
        raise ValidationFailed(
            "invalid query parameters",
            details={"query": [f"Must have at most {MAX_QUERY_PARAMS} parameters."]},
        )


def install_bounds(app: Flask) -> None:
    """Check the query string of every request first."""
    app.before_request(check_query_string)
