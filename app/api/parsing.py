"""Turn request bodies and query strings into validated data, or a RegistryError."""
from __future__ import annotations

import json
from typing import Any

from flask import request
from marshmallow import Schema, ValidationError

from ..errors import MalformedJSON, UnsupportedMediaType, ValidationFailed


def _stringify_keys(messages: Any) -> Any:
    # marshmallow indexes list errors by int; JSON object keys must be strings.
    if isinstance(messages, dict):
        return {str(key): _stringify_keys(value) for key, value in messages.items()}
    return messages


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _validate(schema: Schema, data: Any, what: str) -> dict[str, Any]:
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise ValidationFailed(
            f"invalid {what}", details=_stringify_keys(exc.normalized_messages())
        ) from None


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
    if optional and not raw.strip():
        return _validate(schema, {}, "request body")
    if not request.is_json:
        raise UnsupportedMediaType(
            f"request body must be application/json, got {request.mimetype or 'no Content-Type'}"
        )
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedJSON(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        # "[[[[..." within the size limit nests deeper than the decoder recurses.
        raise MalformedJSON("request body nests too deeply") from None
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
