"""A provider's GPUs as ready-made JSON pieces: whatever the GPUs hold, they read back the same."""
from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from app.gpu_fragments import gpus_json, gpus_of, legacy_gpus, live_fragments, split_gpus
from app.rules import GPU_SEP, LIVE_GPU_FIELDS

# Strings a daemon may send: quotes, braces, separators of JSON, control characters, any script.
text = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(['"},{"', "\x1e", "\\", "]"])
live_value = st.integers(0, 100) | st.booleans() | st.none()
gpu = st.fixed_dictionaries(
    {"model_name": text, "vram_mb": st.integers(1, 4_194_304), "driver_version": text},
    optional={"architecture": text, "cuda_cores": st.integers(0, 100_000),
              **{name: live_value for name in LIVE_GPU_FIELDS}},
)
gpus = st.lists(gpu, min_size=1, max_size=8)


def same_gpus(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return [sorted(g.items()) for g in a] == [sorted(g.items()) for g in b]


@given(gpus)
def test_the_pieces_join_into_the_same_gpus(listed: list[dict[str, Any]]) -> None:
    fields = split_gpus(listed)
    assert fields["gpu_specs"].count(GPU_SEP) == fields["gpu_live"].count(GPU_SEP) == len(listed) - 1
    assert same_gpus(gpus_of(fields), listed)
    assert orjson.loads(gpus_json(fields)) == gpus_of(fields)


@given(gpus)
def test_the_live_pieces_hold_only_live_values_in_their_fixed_order(listed: list[dict[str, Any]]) -> None:
    fields = split_gpus(listed)
    for spec, live, original in zip(fields["gpu_specs"].split(GPU_SEP), fields["gpu_live"].split(GPU_SEP), listed):
        assert list(orjson.loads("{" + live + "}")) == [name for name in LIVE_GPU_FIELDS if name in original]
        assert not set(orjson.loads("{" + spec + "}")) & set(LIVE_GPU_FIELDS)


@given(gpus, st.data())
def test_a_heartbeats_live_values_replace_the_registered_ones(listed: list[dict[str, Any]], data: Any) -> None:
    live = [data.draw(st.fixed_dictionaries({name: st.integers(0, 100) for name in LIVE_GPU_FIELDS[:4]}))
            for _ in listed]
    fields = {**split_gpus(listed), "gpu_live": live_fragments(live)}
    expected = [{**{k: v for k, v in g.items() if k not in LIVE_GPU_FIELDS}, **values}
                for g, values in zip(listed, live)]
    assert same_gpus(gpus_of(fields), expected)


@given(gpus)
def test_a_hash_of_layout_2_reads_the_same(listed: list[dict[str, Any]]) -> None:
    live = [{name: g[name] for name in LIVE_GPU_FIELDS if name in g} for g in listed]
    old = orjson.dumps([{k: v for k, v in g.items() if k not in LIVE_GPU_FIELDS} for g in listed]).decode()
    # Layout 2: the list with its live values, or the daemon's metrics apart as a JSON list;
    # or pieces that a heartbeat of layout 3 wrote before the migration reached the hash.
    for fields in ({"gpus": orjson.dumps(listed).decode()},
                   {"gpus": old, "gpu_live": orjson.dumps(live).decode()},
                   {"gpus": old, "gpu_live": live_fragments(live)}):
        assert same_gpus(gpus_of(fields), listed)


def test_whole_floats_of_version_1_come_back_as_integers() -> None:
    [gpu_] = legacy_gpus('[{"model_name":"A","vram_mb":81920.0,"temperature_c":4e1,"power_draw_w":1.5}]', None)
    assert gpu_ == {"model_name": "A", "vram_mb": 81920, "temperature_c": 40, "power_draw_w": 2}
    assert type(gpu_["vram_mb"]) is int


def test_a_hash_without_gpus_has_none() -> None:
    assert gpus_json({}) is None and gpus_of({}) == []


@given(gpu, st.integers(2, 8), st.data())
def test_identical_gpus_keep_their_spec_once_and_read_back_whole(one: dict[str, Any], n: int, data: Any) -> None:
    listed = [dict(one) for _ in range(n)]
    listed.append(data.draw(gpu))  # perhaps another kind after them
    fields = split_gpus(listed)
    pieces = fields["gpu_specs"].split(GPU_SEP)
    assert pieces[0] and pieces[1:n] == [""] * (n - 1)
    assert same_gpus(gpus_of(fields), listed)
