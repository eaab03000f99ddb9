"""Indexing: what a provider's details put into the indexes, counters and tokens."""
from __future__ import annotations

import pytest

from app.store.indexing import gpu_buckets, gpu_token, index_entries, is_irregular, summary_contribution
from app.store.keys import Keys

KEYS = Keys()


def gpu(model: str, vram: int, arch: str = "ampere", healthy: bool = True) -> dict:
    return {"model_name": model, "vram_mb": vram, "architecture": arch, "is_healthy": healthy}


def test_a_gpu_token_is_canonical_model_architecture_and_vram_marked_when_unhealthy():
    assert gpu_token(gpu("NVIDIA  A100", 81920)) == "nvidia+a100|ampere|81920"
    assert gpu_token(gpu("A100", 40960, healthy=False)) == "a100|ampere|40960!"


def test_buckets_hold_the_kth_largest_vram_per_model_and_across_models():
    details = {"gpus": [gpu("A100", 40960), gpu("a100", 81920), gpu("H100", 81559, "hopper")]}
    assert gpu_buckets(KEYS, details) == [
        ("registry:gpu:a100:1", 81920), ("registry:gpu:a100:2", 40960),
        ("registry:gpu:h100:1", 81559),
        ("registry:gpus:1", 81920), ("registry:gpus:2", 81559), ("registry:gpus:3", 40960),
    ]


def test_detail_indexes_are_architectures_and_location_once_each():
    details = {"gpus": [gpu("A100", 1), gpu("A100", 2)], "location": "EU West"}
    assert index_entries(KEYS, details) == [("registry:arch:ampere", 0), ("registry:location:eu+west", 0)]


def test_summary_contribution_counts_providers_gpus_and_vram_by_folded_name():
    details = {"gpus": [gpu("A100", 100), gpu("a100 ", 50)], "location": "EU  West"}
    assert summary_contribution(details) == [
        ["n", "", 1], ["mp", "a100", 1], ["mg", "a100", 2], ["mv", "a100", 150],
        ["lp", "eu west", 1], ["lg", "eu west", 2],
    ]


@pytest.mark.parametrize(
    ("tokens", "irregular"),
    [
        ("nvidia+a100|ampere|81920 nvidia+a100|ampere|81920", False),
        ("nvidia+a100|ampere|81920 nvidia+a100|ampere|40960", False),
        ("nvidia+a100|ampere|81920 nvidia+h100|hopper|81920", True),
        ("nvidia+a100|ampere|81920!", True),
        ("", False),
    ],
)
def test_irregular_is_mixed_kinds_or_an_unhealthy_gpu(tokens, irregular):
    assert is_irregular(tokens, []) is irregular
