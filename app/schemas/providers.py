"""Schemas of provider bodies and query parameters: the API's whole input contract."""
from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, pre_load, validate

from ..store.keys import LIVE_STATUSES, STATUSES
from .fields import IPAddress, JSONObject, Name, StrictBoolean, StrictFloat, StrictInteger

MAX_VRAM_MB = 4_194_304
MAX_GPUS = 64
MAX_METADATA_BYTES = 8192
MAX_METADATA_DEPTH = 8


class _Strict(Schema):
    class Meta:
        unknown = RAISE

    @post_load
    def _drop_nulls(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # An optional field sent as null is the same as a field not sent.
        return {key: value for key, value in data.items() if value is not None}


class GpuSchema(_Strict):
    """One GPU; `model_name`, `vram_mb` and `driver_version` are required."""

    model_name = Name(required=True)
    vram_mb = StrictInteger(required=True, validate=validate.Range(1, MAX_VRAM_MB))
    driver_version = Name(required=True, max_length=64)
    architecture = Name(allow_none=True, max_length=64)
    compute_capability = Name(allow_none=True, max_length=16)
    cuda_cores = StrictInteger(allow_none=True, validate=validate.Range(0, 10_000_000))
    tensor_cores = StrictInteger(allow_none=True, validate=validate.Range(0, 10_000_000))
    memory_bandwidth_gb_s = StrictFloat(allow_none=True, validate=validate.Range(0, 1_000_000))
    power_consumption_w = StrictFloat(allow_none=True, validate=validate.Range(0, 1_000_000))
    utilization_gpu_percent = StrictFloat(allow_none=True, validate=validate.Range(0, 100))
    utilization_memory_percent = StrictFloat(allow_none=True, validate=validate.Range(0, 100))
    temperature_c = StrictFloat(allow_none=True, validate=validate.Range(-273, 1000))
    power_draw_w = StrictFloat(allow_none=True, validate=validate.Range(0, 1_000_000))
    is_healthy = StrictBoolean(load_default=True)


class ProviderDetailsSchema(_Strict):
    """What `PUT /providers/{id}` replaces: everything but identity, status and lease."""

    owner_id = Name(required=True)
    name = Name(required=True)
    hostname = Name(allow_none=True)
    ip_address = IPAddress(allow_none=True)
    location = Name(allow_none=True)
    gpus = fields.List(
        fields.Nested(GpuSchema), required=True, validate=validate.Length(1, MAX_GPUS)
    )
    metadata = JSONObject(
        max_bytes=MAX_METADATA_BYTES, max_depth=MAX_METADATA_DEPTH, load_default=dict
    )


class RegisterSchema(ProviderDetailsSchema):
    """`POST /providers`: the details, an optional daemon-kept `id`, an optional status."""

    id = fields.UUID(allow_none=True)
    status = fields.String(allow_none=True, validate=validate.OneOf(LIVE_STATUSES))

    @post_load
    def _canonical_id(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if data.get("id") is not None:
            data["id"] = str(data["id"])
        return data


class HeartbeatSchema(_Strict):
    """The heartbeat body; both fields optional."""

    status = fields.String(allow_none=True, validate=validate.OneOf(STATUSES))
    # Same shape as `gpus`, every field optional: matched to the stored GPUs by position.
    gpu_metrics = fields.List(
        fields.Nested(GpuSchema(partial=True)),
        allow_none=True,
        validate=validate.Length(max=MAX_GPUS),
    )


SORTS = ("id", "vram", "-vram", "gpus", "-gpus", "last_seen", "-last_seen")


class ListQuerySchema(_Strict):
    """Query parameters of `GET /providers`."""

    gpu_model = Name()
    min_vram = fields.Integer(validate=validate.Range(1, MAX_VRAM_MB))
    min_gpus = fields.Integer(load_default=1, validate=validate.Range(1, MAX_GPUS))
    architecture = Name(max_length=64)
    healthy_only = fields.Boolean(load_default=False)
    status = fields.List(fields.String(validate=validate.OneOf(STATUSES)), load_default=list)
    location = Name()
    sort = fields.String(load_default="id", validate=validate.OneOf(SORTS))
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    cursor = fields.String(validate=validate.Length(1, 64))

    @pre_load
    def _split_status(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        status = data.get("status")
        if isinstance(status, str):
            items = [item.strip() for item in status.split(",")]
            if not all(items):
                raise ValidationError({"status": ["Must be a comma-separated list of statuses."]})
            data = {**data, "status": items}
        return data
