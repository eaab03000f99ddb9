"""Schemas of provider bodies and query parameters: the API's whole input contract."""
from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, pre_load, validate

from ..rules import LIVE_GPU_FIELDS
from ..store.keys import LIVE_STATUSES, STATUSES
from .fields import (
    MAX_NAME, IPAddress, JSONObject, Name, OptionalName, PlainNestedList, StrictBoolean, StrictInteger,
    Text,
)

MAX_VRAM_MB = 4_194_304
MAX_GPUS = 64
MAX_METADATA_BYTES = 8192
MAX_METADATA_DEPTH = 8
# The Go daemon's heartbeat status: "I am alive", whatever my status.
ALIVE = "online"


class _Strict(Schema):
    class Meta:
        unknown = RAISE

    @post_load
    def _drop_nulls(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # An optional field sent as null is the same as a field not sent.
        return {key: value for key, value in data.items() if value is not None}


# Upper bounds of the integer GPU fields: those of the Go client's types (uint8, uint32), or
# tighter where no real GPU comes near.
UINT8, UINT32 = 255, 2**32 - 1


class GpuSchema(_Strict):
    """One GPU; `model_name`, `vram_mb` and `driver_version` are required.

    Every number is an integer, as the platform's Go structs declare it.
    """

    model_name = Name(required=True)
    vram_mb = StrictInteger(required=True, validate=validate.Range(1, MAX_VRAM_MB))
    # "" is an unknown driver (the Go daemon sends it when nvidia-smi gave none).
    driver_version = Text(required=True, max_length=64)
    architecture = OptionalName(max_length=64)
    compute_capability = OptionalName(max_length=16)
    cuda_cores = StrictInteger(allow_none=True, validate=validate.Range(0, 10_000_000))
    tensor_cores = StrictInteger(allow_none=True, validate=validate.Range(0, 10_000_000))
    memory_bandwidth_gb_s = StrictInteger(allow_none=True, validate=validate.Range(0, 1_000_000))
    power_consumption_w = StrictInteger(allow_none=True, validate=validate.Range(0, 1_000_000))
    utilization_gpu_percent = StrictInteger(allow_none=True, validate=validate.Range(0, 100))
    utilization_memory_percent = StrictInteger(allow_none=True, validate=validate.Range(0, 100))
    temperature_c = StrictInteger(allow_none=True, validate=validate.Range(0, UINT8))
    power_draw_w = StrictInteger(allow_none=True, validate=validate.Range(0, 1_000_000))
    is_healthy = StrictBoolean(load_default=True)


# Fields of an answer that the server sets; a body copied from `GET` may carry them back.
SERVER_FIELDS = (
    "status", "liveness", "registered_at", "last_seen_at", "lease_expires_at", "version", "claim",
)


class ProviderDetailsSchema(_Strict):
    """What `PUT /providers/{id}` replaces: everything but identity, status and lease.

    The object `GET` answered is accepted as it is: its `id` must be the path's, and the
    server's own fields are ignored.
    """

    id = fields.UUID(allow_none=True)
    owner_id = Name(required=True)
    name = Name(required=True)
    hostname = OptionalName()
    ip_address = IPAddress(allow_none=True)
    location = OptionalName()
    gpus = fields.List(
        fields.Nested(GpuSchema), required=True, validate=validate.Length(1, MAX_GPUS)
    )
    # null is what Go sends for a nil map: no metadata.
    metadata = JSONObject(
        max_bytes=MAX_METADATA_BYTES, max_depth=MAX_METADATA_DEPTH, load_default=dict, allow_none=True
    )
    # Ignored: the server's fields, as `GET` returned them.
    registered_at = fields.Raw(load_only=True, allow_none=True)
    last_seen_at = fields.Raw(load_only=True, allow_none=True)
    lease_expires_at = fields.Raw(load_only=True, allow_none=True)
    version = fields.Raw(load_only=True, allow_none=True)
    claim = fields.Raw(load_only=True, allow_none=True)
    status = fields.Raw(load_only=True, allow_none=True)
    liveness = fields.Raw(load_only=True, allow_none=True)

    @post_load
    def _server_fields(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        for name in SERVER_FIELDS:
            data.pop(name, None)
        if data.get("id") is not None:
            data["id"] = str(data["id"])
        return data


class RegisterSchema(ProviderDetailsSchema):
    """`POST /providers`: the details, an optional daemon-kept `id`, an optional status.

    The server's fields of an answer (`registered_at`, `version`, ...) are accepted and ignored;
    a status of "" or "online" (the Go client's) means the default, `idle`.
    """

    status = fields.String(
        allow_none=True, validate=validate.OneOf(("", ALIVE, *LIVE_STATUSES)), load_only=True
    )

    @post_load
    def _server_fields(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        status = data.get("status")
        data = super()._server_fields(data, **kwargs)
        if status not in (None, "", ALIVE):
            data["status"] = status
        return data


class GpuMetricsSchema(_Strict):
    """One GPU's live values in a heartbeat, matched to the stored GPUs by position.

    Also takes the Go daemon's GPU struct as it sends it: `temperature_celsius` is
    `temperature_c`; its static fields (often "" or 0 after nvidia-smi parsing),
    `is_available` and `last_check_at` are accepted and never stored.
    """

    utilization_gpu_percent = StrictInteger(allow_none=True, validate=validate.Range(0, 100))
    utilization_memory_percent = StrictInteger(allow_none=True, validate=validate.Range(0, 100))
    temperature_c = StrictInteger(allow_none=True, validate=validate.Range(0, UINT8))
    temperature_celsius = StrictInteger(allow_none=True, validate=validate.Range(0, UINT8))
    power_draw_w = StrictInteger(allow_none=True, validate=validate.Range(0, 1_000_000))
    is_healthy = StrictBoolean(allow_none=True)
    # Static details change with `PUT /providers/{id}` or a registration, never a heartbeat.
    model_name = Text(allow_none=True, max_length=MAX_NAME)
    vram_mb = StrictInteger(allow_none=True, validate=validate.Range(0, MAX_VRAM_MB))
    driver_version = Text(allow_none=True, max_length=64)
    architecture = Text(allow_none=True, max_length=64)
    compute_capability = Text(allow_none=True, max_length=16)
    cuda_cores = StrictInteger(allow_none=True, validate=validate.Range(0, UINT32))
    tensor_cores = StrictInteger(allow_none=True, validate=validate.Range(0, UINT32))
    memory_bandwidth_gb_s = StrictInteger(allow_none=True, validate=validate.Range(0, 2**64 - 1))
    power_consumption_w = StrictInteger(allow_none=True, validate=validate.Range(0, UINT32))
    is_available = StrictBoolean(allow_none=True)
    last_check_at = Text(allow_none=True, max_length=64)

    @post_load
    def _live_only(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return live_values(data)


def live_values(data: dict[str, Any]) -> dict[str, Any]:
    """Return the live values of a loaded GpuMetricsSchema entry (nulls dropped)."""
    celsius = data.pop("temperature_celsius", None)
    if data.get("temperature_c") is None and celsius is not None:
        data["temperature_c"] = celsius
    return {name: data[name] for name in LIVE_GPU_FIELDS if data.get(name) is not None}


class HeartbeatSchema(_Strict):
    """The heartbeat body; every field optional.

    The Go daemon's body is accepted as it sends it: `provider_id` (checked against the path
    by the view), `timestamp` (logged, never trusted for the lease) and `status: "online"`,
    which means "alive": the status stays, an offline provider comes back idle.
    """

    provider_id = fields.UUID(allow_none=True)
    status = fields.String(allow_none=True, validate=validate.OneOf((*STATUSES, ALIVE)))
    timestamp = Text(allow_none=True, max_length=64)
    gpu_metrics = PlainNestedList(
        GpuMetricsSchema, live_values, allow_none=True, validate=validate.Length(max=MAX_GPUS)
    )

    @post_load
    def _alive(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if data.get("status") == ALIVE:
            del data["status"]
        if data.get("provider_id") is not None:
            data["provider_id"] = str(data["provider_id"])
        return data


SORTS = ("id", "vram", "-vram", "gpus", "-gpus", "last_seen", "-last_seen")


class ListQuerySchema(_Strict):
    """Query parameters of `GET /providers`."""

    gpu_model = Name(metadata={"description": "a substring of a GPU's model, any case"})
    gpu_model_exact = Name(metadata={"description": "a GPU's whole model name, any case"})
    min_vram = fields.Integer(validate=validate.Range(1, MAX_VRAM_MB))
    min_gpus = fields.Integer(load_default=1, validate=validate.Range(1, MAX_GPUS))
    architecture = Name(max_length=64, metadata={"description": "a substring of a GPU's architecture"})
    architecture_exact = Name(max_length=64, metadata={"description": "a GPU's whole architecture"})
    healthy_only = fields.Boolean(load_default=False)
    status = fields.List(fields.String(validate=validate.OneOf(STATUSES)), load_default=list)
    location = Name()
    sort = fields.String(load_default="id", validate=validate.OneOf(SORTS))
    # Absent: every match, in one array (as the platform's original server answered).
    limit = fields.Integer(validate=validate.Range(1, 1000))
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
