"""What a provider's details put into the indexes, counters and tokens: pure functions.

Writes (providers.py) pass these to write.lua; a restore (restore.py) computes the same for
snapshotted hashes; the property tests recompute the indexes with them.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from .keys import Keys, canonical_name, fold_name
from ..rules import UNHEALTHY_MARK, is_claim_field, is_irregular

__all__ = [
    "bucket_stems", "dumps", "gpu_buckets", "gpu_token", "index_entries", "is_claim_field", "is_irregular",
    "summary_contribution",
]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def gpu_token(gpu: dict[str, Any]) -> str:
    """Return a GPU's "model|architecture|vram" token, as the scripts compare GPUs.

    An unhealthy GPU's token ends with "!", so that scripts read health without decoding the
    GPU list (heartbeat.lua keeps the mark in step with `is_healthy`).
    """
    arch = canonical_name(gpu.get("architecture") or "")
    unhealthy = UNHEALTHY_MARK if gpu.get("is_healthy") is False else ""
    return f"{canonical_name(gpu['model_name'])}|{arch}|{gpu['vram_mb']}{unhealthy}"


def index_entries(keys: Keys, details: dict[str, Any]) -> list[tuple[str, float]]:
    """Return the (index key, score 0) pairs of the detail indexes a provider belongs to.

    Architecture and location; the GPU indexes depend on the status too (`gpu_buckets`).
    """
    entries: dict[str, float] = {}
    for gpu in details["gpus"]:
        if gpu.get("architecture"):
            entries[keys.architecture(gpu["architecture"])] = 0
    if details.get("location"):
        entries[keys.location(details["location"])] = 0
    return list(entries.items())


def gpu_buckets(keys: Keys, details: dict[str, Any]) -> list[tuple[str, int]]:
    """Return the (GPU index, VRAM) pairs whose buckets a provider belongs to.

    For each model, the provider is in the index `gpu:<model>:<k>` for k = 1..(its GPUs of
    that model), in the bucket of the k-th largest VRAM of them (and of its stored status):
    "at least k GPUs of model M with VRAM >= v" is then the buckets of `gpu:<M>:<k>` from
    size v up, each already sorted by ID. `gpus:<k>` does the same across models.
    """
    vram_by_model: dict[str, list[int]] = defaultdict(list)
    for gpu in details["gpus"]:
        # Models that differ only in case or spacing share one index.
        vram_by_model[canonical_name(gpu["model_name"])].append(gpu["vram_mb"])
    out: list[tuple[str, int]] = []
    for model, vrams in vram_by_model.items():
        for k, vram in enumerate(sorted(vrams, reverse=True), start=1):
            out.append((keys.gpu_model_canonical(model, k), vram))
    all_vram = sorted((gpu["vram_mb"] for gpu in details["gpus"]), reverse=True)
    for k, vram in enumerate(all_vram, start=1):
        out.append((keys.gpu_any(k), vram))
    return out


def bucket_stems(keys: Keys, details: dict[str, Any]) -> str:
    """Return the hash field naming a provider's GPU buckets without their status."""
    return " ".join(f"{index}:{vram}" for index, vram in gpu_buckets(keys, details))


def summary_contribution(details: dict[str, Any]) -> list[list[Any]]:
    """Return what a provider adds to the capacity counters: [kind, name, amount] triples.

    Kinds: n providers; mp/mg/mv providers, GPUs and VRAM per model; lp/lg providers and
    GPUs per location. Names are folded, so "A100" and "a100" count together.
    """
    out: list[list[Any]] = [["n", "", 1]]
    gpus: dict[str, list[int]] = defaultdict(list)
    for gpu in details["gpus"]:
        gpus[fold_name(gpu["model_name"])].append(gpu["vram_mb"])
    for model, vrams in gpus.items():
        out += [["mp", model, 1], ["mg", model, len(vrams)], ["mv", model, sum(vrams)]]
    if details.get("location"):
        location = fold_name(details["location"])
        out += [["lp", location, 1], ["lg", location, len(details["gpus"])]]
    return out
