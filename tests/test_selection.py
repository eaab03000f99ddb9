"""Selection: the filter arguments of select.lua, one definition shared by the query and claims."""
from __future__ import annotations

from app.models import Filters
from app.store.selection import filter_args, filter_keys


def test_selection_arguments_are_shared_by_the_query_and_claims(registry):
    filters = Filters(gpu_model="A100", min_vram=40000)
    store = registry.store
    assert store.filter_keys(filters) == filter_keys(store.keys, filters)
    assert store.filter_args(filters) == filter_args(filters)
    assert registry.claims.providers.filter_keys(filters) == filter_keys(store.keys, filters)


def test_unused_filters_name_the_never_written_key(registry):
    keys = registry.store.keys
    selected = filter_keys(keys, Filters(gpu_model="A100"))
    assert selected[:2] == [keys.no_key, keys.no_key]
    assert filter_keys(keys, Filters(min_vram=1000, location="EU West"))[:2] == [
        keys.gpu_any(1), keys.location("EU West"),
    ]


def test_substring_filters_are_folded_and_exact_ones_canonical():
    args = filter_args(Filters(gpu_model=" NVIDIA  A100 ", architecture_exact="Ada Lovelace",
                               statuses=("idle", "busy"), healthy_only=True))
    assert args[0] == "idle,busy"
    assert args[3] == "nvidia a100"
    assert args[6] == "ada+lovelace"
    assert args[7] == "1"
