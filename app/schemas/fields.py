"""Strict field types: JSON bodies get no silent coercion ("12" is not 12, 1 is not true)."""
from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from marshmallow import ValidationError, fields, validate

MAX_NAME = 256
# C0 controls and DEL: NUL cannot be stored by PostgreSQL, and none belongs in a name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class StrictInteger(fields.Integer):
    """An integer that must be a JSON integer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)


class StrictFloat(fields.Float):
    """A number that must be a JSON number, not a string."""

    def _validated(self, value: Any) -> float:
        if isinstance(value, str):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class StrictBoolean(fields.Boolean):
    """A boolean that must be JSON true or false."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if value is True or value is False:
            return value
        raise self.make_error("invalid", input=value)


def _no_control_characters(value: str) -> None:
    if _CONTROL.search(value):
        raise ValidationError("Must not contain control characters.")
    if not value.strip():
        raise ValidationError("Must not be blank.")


# The same rule as a JSON Schema pattern, for the published contract.
NAME_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"


class Name(fields.String):
    """A non-blank string of 1 to 256 characters without control characters."""

    def __init__(self, max_length: int = MAX_NAME, **kwargs: Any) -> None:
        metadata = {"pattern": NAME_PATTERN, **kwargs.pop("metadata", {})}
        super().__init__(
            validate=[validate.Length(min=1, max=max_length), _no_control_characters],
            metadata=metadata,
            **kwargs,
        )


class IPAddress(fields.String):
    """An IPv4 or IPv6 address, kept as its compressed text."""

    def __init__(self, **kwargs: Any) -> None:
        # For the published contract (and the cases generated from it).
        any_of = [{"format": "ipv4"}, {"format": "ipv6"}]
        super().__init__(metadata={"anyOf": any_of, **kwargs.pop("metadata", {})}, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise ValidationError("Not a valid IP address.") from None


class JSONObject(fields.Dict):
    """A JSON object bounded in encoded size and nesting depth."""

    def __init__(self, max_bytes: int, max_depth: int, **kwargs: Any) -> None:
        super().__init__(keys=fields.String(), **kwargs)
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        result = super()._deserialize(value, attr, data, **kwargs)
        if _depth(result, self.max_depth) > self.max_depth:
            raise ValidationError(f"Must not nest deeper than {self.max_depth} levels.")
        size = len(json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode())
        if size > self.max_bytes:
            raise ValidationError(f"Must be at most {self.max_bytes} bytes as JSON, got {size}.")
        return result


def _depth(value: Any, limit: int) -> int:
    # Stops one level past `limit`: a body nested 500 deep would exhaust the recursion limit.
    if limit < 0 or not isinstance(value, (dict, list)):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(v, limit - 1) for v in children), default=0)
