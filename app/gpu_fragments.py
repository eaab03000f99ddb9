"""A provider's GPUs as the store keeps them: ready-made JSON fragments, one per GPU.

Layout 3 keeps each GPU in two pieces, the members of its JSON object without the braces:

- `gpu_specs`: what changes only with the provider's details (model, VRAM, driver, ...);
- `gpu_live`: the live values a heartbeat sends (`LIVE_GPU_FIELDS`).

Each field holds its GPUs' fragments joined by `GPU_SEP` ("\\x1e", which JSON text never
holds raw: a string escapes it). A GPU's spec is never empty (it has a model), so an empty
spec piece means "the same as the GPU before": a rig of eight identical GPUs keeps its spec
once (about 550 bytes a provider over the benchmarks' fleet). An empty live piece is a GPU
without live values.
A page then puts each GPU together by joining strings, with nothing parsed or encoded; a
heartbeat that carries every live value replaces `gpu_live` whole, and one that carries some
of them rewrites only that field (heartbeat.lua).

Hashes written before layout 3 hold the whole list as JSON in `gpus`, and perhaps the last
live values as a JSON list in `gpu_live`; they are read here too, until the migration
(store/migrations.py) rewrites them.
"""
from __future__ import annotations

from typing import Any, Mapping

import orjson

from .rules import GPU_SEP, LIVE_GPU_FIELDS

# GPU fields that the platform's Go structs declare as integers.
INTEGER_GPU_FIELDS = (
    "vram_mb", "cuda_cores", "tensor_cores", "memory_bandwidth_gb_s", "power_consumption_w",
    "utilization_gpu_percent", "utilization_memory_percent", "temperature_c", "power_draw_w",
)
_LIVE = frozenset(LIVE_GPU_FIELDS)
# How an unhealthy GPU's live piece says so: orjson (split_gpus, live_fragments) and
# heartbeat.lua's live_piece both write JSON without spaces.
_UNHEALTHY = '"is_healthy":false'


def _members(values: Mapping[str, Any]) -> str:
    """Return a JSON object's members without its braces ("" for an empty object)."""
    return orjson.dumps(values).decode()[1:-1]


def live_fragments(live: list[Mapping[str, Any]]) -> str:
    """Return the `gpu_live` text of live values given by GPU position."""
    return GPU_SEP.join(_members(values) for values in live)


def split_gpus(gpus: list[dict[str, Any]]) -> dict[str, str]:
    """Return the `gpu_specs` and `gpu_live` fields of a GPU list.

    The specs keep the list's key order; the live values come in LIVE_GPU_FIELDS order, as
    heartbeat.lua writes them.
    """
    specs, live = [], []
    previous = None
    for gpu in gpus:
        spec = _members({k: v for k, v in gpu.items() if k not in _LIVE})
        specs.append("" if spec == previous else spec)  # a rig's identical GPUs: kept once
        previous = spec
        live.append(_members({k: gpu[k] for k in LIVE_GPU_FIELDS if k in gpu}))
    return {"gpu_specs": GPU_SEP.join(specs), "gpu_live": GPU_SEP.join(live)}


def health_marks(live: str | None) -> tuple[bool, ...]:
    """Return, for each GPU of a `gpu_live`, whether it says the GPU is unhealthy."""
    return tuple(_UNHEALTHY in part for part in (live or "").split(GPU_SEP))


def _join(specs: str, live: str | None) -> str:
    spec_parts = specs.split(GPU_SEP)
    if "" in spec_parts:
        for i in range(1, len(spec_parts)):
            spec_parts[i] = spec_parts[i] or spec_parts[i - 1]
    if not live:
        return "[{" + "},{".join(spec_parts) + "}]"
    live_parts = live.split(GPU_SEP)
    objects = [spec + "," + values if values else spec for spec, values in zip(spec_parts, live_parts)]
    return "[{" + "},{".join(objects + spec_parts[len(live_parts):]) + "}]"


def gpus_json(fields: Mapping[str, str | None]) -> str | None:
    """Return a hash's GPU list as the API shows it, as JSON text (None: the hash has none).

    For layout 3 no JSON is parsed; an older hash's list is decoded and its live values laid
    over it by position.
    """
    specs = fields.get("gpu_specs")
    if specs is not None:
        return _join(specs, fields.get("gpu_live"))
    legacy = fields.get("gpus")
    if legacy is None:
        return None
    return orjson.dumps(legacy_gpus(legacy, fields.get("gpu_live"))).decode()


def gpus_of(fields: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """Return a hash's GPU list, decoded (an empty list when it has none)."""
    text = gpus_json(fields)
    return orjson.loads(text) if text is not None else []


def legacy_gpus(text: str, live: str | None) -> list[dict[str, Any]]:
    """Decode an older hash's `gpus` with its `gpu_live` laid over it, by position.

    `gpu_live` was a JSON list in layout 2; a heartbeat of layout 3 on a hash the migration
    has not reached yet writes fragments. Numbers that layout 1 stored as floats come back
    as ints.
    """
    gpus: list[dict[str, Any]] = orjson.loads(text)
    if live:
        values = orjson.loads(live) if live.startswith("[") else [
            orjson.loads("{" + part + "}") for part in live.split(GPU_SEP)
        ]
        for gpu, more in zip(gpus, values):
            gpu.update(more)
    for gpu in gpus:
        for name in INTEGER_GPU_FIELDS:
            if type(gpu.get(name)) is float:
                gpu[name] = round(gpu[name])
    return gpus
