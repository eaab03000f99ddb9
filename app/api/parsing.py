"""Turn request bodies and query strings into validated data, or a RegistryError."""
from __future__ import annotations

from typing import Any

import orjson

from flask import current_app, request
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from ..errors import MalformedJSON, UnsupportedMediaType, ValidationFailed


def _stringify_keys(messages: Any) -> Any:
    # marshmallow indexes list errors by int; JSON object keys must be strings.
    if isinstance(messages, dict):
        return {str(key): _stringify_keys(value) for key, value in messages.items()}
    return messages


def _validate(schema: Schema, data: Any, what: str) -> dict[str, Any]:
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise ValidationFailed(
            f"invalid {what}", details=_stringify_keys(exc.normalized_messages())
        ) from None


def _reject_truncated(read: int) -> None:
    # Without Content-Length (chunked), werkzeug stops reading at MAX_CONTENT_LENGTH and
    # returns the first bytes as if they were the whole body: a byte past them means 413.
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and read >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


def json_body(schema: Schema, *, optional: bool = False) -> dict[str, Any]:
    """Parse the request's JSON object and load it with `schema`.

    Args:
        optional: an empty body, whatever its Content-Type, counts as `{}`.
    Raises:
        UnsupportedMediaType: a body that is not `application/json`.
        MalformedJSON: a body that does not parse, or is not a JSON object.
        ValidationFailed: the object does not fit the schema.
    """
    raw = request.get_data(cache=True)  # bounded by MAX_CONTENT_LENGTH: 413 past it
    _reject_truncated(len(raw))
    if optional and not raw.strip():
        return _validate(schema, {}, "request body")
    if not request.is_json:
        raise UnsupportedMediaType(
            f"request body must be application/json, got {request.mimetype or 'no Content-Type'}"
        )
    try:
        # Strict RFC 8259: no NaN or Infinity, UTF-8 only, nesting bounded (1024 levels).
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedJSON("request body must be a JSON object")
    return _validate(schema, data, "request body")


def query_args(schema: Schema, *, repeatable: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load the query string with `schema`; a parameter may repeat only if `repeatable`."""
    data: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        if len(values) > 1 and key not in repeatable:
            raise ValidationFailed(
                "invalid query parameters", details={key: ["Must be given at most once."]}
            )
        data[key] = ",".join(values) if key in repeatable else values[0]
    return _validate(schema, data, "query parameters")
