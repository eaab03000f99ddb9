"""PlainNestedList loads the daemon's GPU metrics exactly as marshmallow's Nested list does.

The heartbeat's `gpu_metrics` skips marshmallow's per-field machinery for plain entries; for
every body, the answer must be the one `fields.List(fields.Nested(GpuMetricsSchema))` gives:
the same loaded values, or the same errors.
"""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields, validate

from app.schemas.fields import PlainNestedList, StrictInteger
from app.schemas.providers import MAX_GPUS, GpuMetricsSchema, HeartbeatSchema


class ReferenceHeartbeatSchema(HeartbeatSchema):
    """The heartbeat schema with marshmallow's own list of nested entries."""

    gpu_metrics = fields.List(
        fields.Nested(GpuMetricsSchema), allow_none=True, validate=validate.Length(max=MAX_GPUS)
    )


FAST, REFERENCE = HeartbeatSchema(), ReferenceHeartbeatSchema()
NAMES = list(GpuMetricsSchema().load_fields) + ["unknown_field"]

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=2**65),
    st.sampled_from([0, 1, 100, 101, 255, 256, 75.0, 75.5, -1.0, 1e30, float("nan")]),
    st.text(max_size=80),
    st.sampled_from(["", "550.54", "a\x00b", "x" * 65, "Ampere"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)

def typed(name: str) -> st.SearchStrategy[Any]:
    """Values of the field's own type, in and out of its bounds: the cases that need care."""
    field = GpuMetricsSchema().load_fields.get(name)
    if isinstance(field, StrictInteger):
        return st.one_of(st.integers(min_value=-3, max_value=2**64 + 3), st.integers(0, 300).map(float))
    if isinstance(field, fields.Boolean):
        return st.booleans()
    return st.text(max_size=70)


entries = st.one_of(
    st.fixed_dictionaries({}, optional={name: st.one_of(typed(name), values) for name in NAMES}),
    st.fixed_dictionaries({}, optional={name: typed(name) for name in NAMES[:-1]}),
    st.sampled_from([None, 1, "gpu", []]),
)


def load(schema: Schema, body: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "loaded", schema.load(body)
    except ValidationError as exc:
        return "refused", exc.messages


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.lists(entries, max_size=4), st.none(), st.just("not a list")))
def test_any_gpu_metrics_load_as_marshmallows_nested_list_loads_them(metrics: Any) -> None:
    body = {"gpu_metrics": metrics}
    assert load(FAST, body) == load(REFERENCE, body)


def test_the_go_daemons_metrics_load_to_their_live_values() -> None:
    entry = {
        "model_name": "", "vram_mb": 0, "driver_version": "", "architecture": "", "compute_capability": "",
        "cuda_cores": 0, "tensor_cores": 0, "memory_bandwidth_gb_s": 0, "power_consumption_w": 0,
        "utilization_gpu_percent": 87, "utilization_memory_percent": 40.0, "temperature_celsius": 71,
        "power_draw_w": 300, "is_healthy": True, "is_available": True, "last_check_at": "2026-11-29T10:00:00Z",
    }
    loaded = FAST.load({"gpu_metrics": [entry, entry]})
    assert loaded["gpu_metrics"] == [
        {"utilization_gpu_percent": 87, "utilization_memory_percent": 40, "temperature_c": 71,
         "power_draw_w": 300, "is_healthy": True},
    ] * 2
    assert type(loaded["gpu_metrics"][0]["utilization_memory_percent"]) is int


@pytest.mark.parametrize(
    "entry",
    [{"temperature_c": 256}, {"utilization_gpu_percent": 12.5}, {"is_healthy": 1}, {"driver_version": "a\x01"},
     {"nonsense": 1}, "not an object"],
)
def test_a_bad_entry_gets_marshmallows_own_error(entry: Any) -> None:
    with pytest.raises(ValidationError) as fast:
        FAST.load({"gpu_metrics": [{"temperature_c": 50}, entry]})
    with pytest.raises(ValidationError) as reference:
        REFERENCE.load({"gpu_metrics": [{"temperature_c": 50}, entry]})
    assert fast.value.messages == reference.value.messages


def test_a_schema_with_fields_it_cannot_check_always_goes_to_marshmallow() -> None:
    class WithDefault(Schema):
        count = StrictInteger(load_default=3)

    class WithEmail(Schema):
        email = fields.Email()

    assert PlainNestedList(WithDefault, dict)._checks is None
    assert PlainNestedList(WithEmail, dict)._checks is None
    assert PlainNestedList(GpuMetricsSchema, dict)._checks is not None
