"""Schemas of claim requests and of the event feed's parameters."""
from __future__ import annotations

import re

from marshmallow import ValidationError, fields, validate

from .fields import Name, StrictBoolean, StrictInteger
from .providers import MAX_GPUS, MAX_VRAM_MB, SORTS, _Strict


class ClaimSchema(_Strict):
    """`POST /providers/claim`: the list filters, how many, in which order, for how long."""

    gpu_model = Name(allow_none=True)
    gpu_model_exact = Name(allow_none=True)
    min_vram = StrictInteger(allow_none=True, validate=validate.Range(1, MAX_VRAM_MB))
    min_gpus = StrictInteger(load_default=1, validate=validate.Range(1, MAX_GPUS))
    architecture = Name(allow_none=True, max_length=64)
    architecture_exact = Name(allow_none=True, max_length=64)
    healthy_only = StrictBoolean(load_default=False)
    location = Name(allow_none=True)
    count = StrictInteger(load_default=1, validate=validate.Range(1, 64))
    sort = fields.String(load_default="id", validate=validate.OneOf(SORTS))
    claim_ttl_s = StrictInteger(load_default=60, validate=validate.Range(1, 3600))
    claimant = Name(load_default="")


class ClaimIdSchema(_Strict):
    """The body of renew, confirm and release."""

    claim_id = fields.UUID(required=True)


STREAM_ID_PART_MAX = 2**64 - 1


def _stream_id_in_range(value: str) -> None:
    # Redis stream IDs are two unsigned 64-bit integers; a larger one is a Redis error (a 503),
    # and so is asking for what comes after the largest one.
    if not re.fullmatch(r"[0-9]+(-[0-9]+)?", value):
        return  # not an ID at all: the pattern reports it
    parts = [int(part) for part in value.split("-")]
    if any(part > STREAM_ID_PART_MAX for part in parts) or parts == [STREAM_ID_PART_MAX] * 2:
        raise ValidationError("Must be a stream ID whose parts fit in 64 bits.")


class EventsQuerySchema(_Strict):
    """Query parameters of `GET /providers/events`."""

    after = fields.String(validate=[validate.Regexp(r"^[0-9]{1,20}(-[0-9]{1,20})?$", error="Must be a stream ID such as 1700000000000-0, or 0."), _stream_id_in_range])
    wait = fields.Float(load_default=0, validate=validate.Range(0, 30))
