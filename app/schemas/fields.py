"""Strict field types: JSON bodies get no silent coercion ("12" is not 12, 1 is not true)."""
from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Callable

from marshmallow import Schema, ValidationError, fields, validate
from marshmallow.utils import missing as ma_missing

MAX_NAME = 256
# C0 controls and DEL: NUL cannot be stored by PostgreSQL, and none belongs in a name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class StrictInteger(fields.Integer):
    """An integer that must be a JSON number without a fractional part.

    `75.0` is taken as 75, since many clients write whole numbers that way; `75.5`, `"75"`
    and `true` are refused. Loaded values are Python ints, so answers carry JSON integers
    (Go's decoder refuses `75.0` for an integer field).
    """

    default_error_messages = {"invalid": "Not a valid integer."}

    def _validated(self, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if value is True or value is False or not isinstance(value, int):
            raise self.make_error("invalid", input=value)
        return value


class StrictBoolean(fields.Boolean):
    """A boolean that must be JSON true or false."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if value is True or value is False:
            return value
        raise self.make_error("invalid", input=value)


def _no_control_characters_in(value: str) -> None:
    if _CONTROL.search(value):
        raise ValidationError("Must not contain control characters.")


def _no_control_characters(value: str) -> None:
    _no_control_characters_in(value)
    if not value.strip():
        raise ValidationError("Must not be blank.")


# The same rules as JSON Schema patterns, for the published contract.
NAME_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"


class Name(fields.String):
    """A non-blank string of 1 to 256 characters without control characters."""

    def __init__(self, max_length: int = MAX_NAME, **kwargs: Any) -> None:
        metadata = {"pattern": NAME_PATTERN, **kwargs.pop("metadata", {})}
        super().__init__(
            validate=[validate.Length(min=1, max=max_length), _no_control_characters],
            metadata=metadata,
            **kwargs,
        )


class OptionalName(Name):
    """A `Name` that may also be sent as "" (Go's zero value): "" means absent, like null."""

    def __init__(self, max_length: int = MAX_NAME, **kwargs: Any) -> None:
        metadata = {"pattern": f"^$|{NAME_PATTERN}"}
        super().__init__(max_length=max_length, allow_none=True, metadata=metadata, **kwargs)

    def deserialize(self, value: Any, *args: Any, **kwargs: Any) -> Any:
        return None if value == "" else super().deserialize(value, *args, **kwargs)


class Text(fields.String):
    """A string of at most `max_length` characters without control characters; may be ""."""

    def __init__(self, max_length: int, **kwargs: Any) -> None:
        super().__init__(
            validate=[validate.Length(max=max_length), _no_control_characters_in],
            metadata={"pattern": TEXT_PATTERN, **kwargs.pop("metadata", {})},
            **kwargs,
        )


class IPAddress(fields.String):
    """An IPv4 or IPv6 address, kept as its compressed text."""

    def __init__(self, **kwargs: Any) -> None:
        # For the published contract (and the cases generated from it).
        any_of = [{"format": "ipv4"}, {"format": "ipv6"}]
        super().__init__(metadata={"anyOf": any_of, **kwargs.pop("metadata", {})}, **kwargs)

    def deserialize(self, value: Any, *args: Any, **kwargs: Any) -> Any:
        # "" is Go's zero value for a string: an address not given.
        return None if value == "" else super().deserialize(value, *args, **kwargs)

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


class _Reject(Exception):
    """An entry PlainNestedList does not vouch for: marshmallow loads the list."""


def _scalar_check(field: fields.Field) -> Callable[[Any], Any] | None:
    """Return a function loading one value as `field` does (raising _Reject), or None."""
    if isinstance(field, StrictInteger):
        convert: Callable[[Any], Any] = field._validated
    elif isinstance(field, StrictBoolean):
        def convert(value: Any) -> Any:
            if value is True or value is False:
                return value
            raise _Reject
    elif type(field) in (fields.String, Text):
        def convert(value: Any) -> Any:
            if isinstance(value, str):
                return value
            raise _Reject
    else:
        return None
    validators, allow_none = tuple(field.validators), field.allow_none

    def check(value: Any) -> Any:
        if value is None:
            if allow_none:
                return None
            raise _Reject
        try:
            value = convert(value)
            for validator in validators:
                validator(value)
        except ValidationError:
            raise _Reject from None
        return value

    return check


class PlainNestedList(fields.List):
    """A list of `Nested(schema)`, whose plain entries are loaded without marshmallow's machinery.

    marshmallow spends about 28 µs per entry of 17 scalar fields: 480 µs for the Go daemon's
    heartbeat of 8 GPUs, more than everything else the heartbeat does. An entry whose keys are
    all the schema's, each value passing its field's own type check and validators, is loaded
    here, then given to `finish` (what the schema's post_load does). Any other entry makes
    marshmallow load the whole list, so errors and their messages are marshmallow's. Only
    StrictInteger, StrictBoolean and plain string fields are checked here: a schema with other
    fields, or with required fields or load defaults, always goes to marshmallow. The list's
    own checks (type, its validators, null) stay marshmallow's.
    """

    def __init__(self, schema: type[Schema], finish: Callable[[dict[str, Any]], dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(fields.Nested(schema), **kwargs)
        self._finish = finish
        declared = schema().load_fields
        checks = {name: (field.attribute or name, _scalar_check(field)) for name, field in declared.items()}
        plain = all(
            check is not None and not field.required and field.load_default is ma_missing
            for (_, check), field in zip(checks.values(), declared.values())
        ) and all(field.data_key in (None, name) for name, field in declared.items())
        self._checks = checks if plain else None

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        if self._checks is not None and isinstance(value, list):
            try:
                return [self._load_entry(entry) for entry in value]
            except _Reject:
                pass
        return super()._deserialize(value, attr, data, **kwargs)

    def _load_entry(self, entry: Any) -> dict[str, Any]:
        if not isinstance(entry, dict):
            raise _Reject
        checks = self._checks
        loaded = {}
        for key, value in entry.items():
            known = checks.get(key)  # type: ignore[union-attr]
            if known is None:
                raise _Reject  # unknown field: the schema raises
            attr, check = known
            loaded[attr] = check(value)
        return self._finish(loaded)
