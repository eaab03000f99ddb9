"""Every Redis key the registry uses, built in one place (the README documents them).

User-supplied names (GPU models, architectures, locations) enter keys only in their canonical
form: case-folded, whitespace collapsed, then percent-encoded (`quote_plus`), so that a name with
`:`, `*`, `{`, spaces or Unicode cannot reach outside its own index or collide with another.
"""
from __future__ import annotations

import functools
from urllib.parse import quote_plus

from ..rules import BUCKET_SEP, LIVE_STATUSES, NO_KEY_SUFFIX, PROVIDER_SUFFIX, STATUSES

__all__ = ["LIVE_STATUSES", "STATUSES", "Keys", "canonical_name", "fold_name"]


def fold_name(name: str) -> str:
    """Return a name case-folded with its whitespace collapsed: how names compare."""
    return " ".join(name.split()).casefold()


# Cached: a restore or a snapshot asks for the same few names hundreds of thousands of times.
@functools.lru_cache(maxsize=65536)
def canonical_name(name: str) -> str:
    """Return the canonical, key-safe form of a model, architecture or location name."""
    return quote_plus(fold_name(name), safe="")


class Keys:
    """Key builder for one key prefix (two registries can share one Redis)."""

    def __init__(self, prefix: str = "registry:") -> None:
        self.prefix = prefix
        self.providers = f"{prefix}providers"
        self.leases = f"{prefix}leases"
        self.claims = f"{prefix}claims"
        self.irregular = f"{prefix}irregular"
        self.events = f"{prefix}events"
        self.counts = f"{prefix}counts"
        self.provider_prefix = f"{prefix}{PROVIDER_SUFFIX}"
        self.lease_prefix = f"{prefix}lease:"
        self.tmp_prefix = f"{prefix}tmp:"
        # Names an unused key argument of a script; never written. A Redis Cluster refuses ""
        # there: it hashes to another slot than the prefix's hash tag.
        self.no_key = f"{prefix}{NO_KEY_SUFFIX}"
        self.gpu_prefix = f"{prefix}gpu:"
        self.arch_prefix = f"{prefix}arch:"
        # Canonical name -> folded name of every GPU model and architecture that has an index:
        # substring filters resolve against these, never against the providers.
        self.gpu_catalog = f"{prefix}catalog:gpu"
        # Redis's time when a serving process last reached it (outage grace, lib.lua).
        self.pulse = f"{prefix}pulse"
        # Providers whose lease runs under outage grace: member ID, score the grace deadline.
        self.grace = f"{prefix}grace"
        self.arch_catalog = f"{prefix}catalog:arch"
        # flask-limiter's counters; its storage adds ":" and its own key after this.
        self.ratelimit_prefix = f"{prefix}ratelimit"
        # Random ID of the data set, written by the first snapshot and by each restore: a
        # Redis that lost its data has none, so a snapshot cannot mistake it for the registry.
        self.generation = f"{prefix}generation"
        # Held (with a lease) by whichever instance is taking a snapshot or restoring.
        self.snapshot_lock = f"{prefix}lock:snapshot"
        # The version of this key layout (app/store/migrations.py).
        self.layout = f"{prefix}layout"
        # Held (with a lease of a few seconds, renewed) by the one process of the deployment
        # that runs the once-per-registry jobs: the sweeper, the snapshots, the data watch.
        self.leader = f"{prefix}lock:leader"
        # Set (with a TTL) while the leader restores a snapshot after Redis lost its data, so
        # that every instance's /health can say so.
        self.restoring = f"{prefix}restoring"

    def pattern(self) -> str:
        """SCAN pattern matching every key of this registry (the prefix's glob characters escaped)."""
        return "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix) + "*"

    def provider(self, provider_id: str) -> str:
        """Hash of one provider's fields."""
        return f"{self.provider_prefix}{provider_id}"

    def lease(self, provider_id: str) -> str:
        """Expiring key whose TTL shows the time left on a provider's lease."""
        return f"{self.lease_prefix}{provider_id}"

    def status(self, status: str) -> str:
        """Set (sorted set, all scores 0) of providers whose stored status is `status`."""
        return f"{self.prefix}status:{status}"

    def gpu_model(self, model: str, count: int) -> str:
        """GPU index of providers with at least `count` GPUs of `model`.

        This key holds the VRAM sizes present (member and score: the count-th largest VRAM);
        the providers are in its buckets, `bucket(key, vram, status)`.
        """
        return self.gpu_model_canonical(canonical_name(model), count)

    def gpu_model_canonical(self, canonical_model: str, count: int) -> str:
        """`gpu_model` for a name already in canonical form."""
        return f"{self.gpu_prefix}{canonical_model}:{count}"

    def gpu_any(self, count: int) -> str:
        """GPU index of providers with at least `count` GPUs of any model (as `gpu_model`)."""
        return f"{self.prefix}gpus:{count}"

    @staticmethod
    def bucket(gpu_index: str, vram_mb: int, status: str) -> str:
        """Providers of a GPU index whose count-th largest VRAM is `vram_mb`, by stored status.

        Every member scores `vram_mb`, so a bucket also sorts by ID.
        """
        return f"{gpu_index}{BUCKET_SEP}{vram_mb}{BUCKET_SEP}{status}"

    def architecture(self, architecture: str) -> str:
        """Providers with at least one GPU of `architecture`."""
        return f"{self.arch_prefix}{canonical_name(architecture)}"

    def location(self, location: str) -> str:
        """Providers at `location`."""
        return f"{self.prefix}location:{canonical_name(location)}"

    def idempotency(self, scope_digest: str) -> str:
        """Record of one Idempotency-Key: its reservation, the write's reply, then the answer.

        `scope_digest` is the SHA-256 of the caller's credential, method, path and key, so
        that neither a key nor a credential appears in Redis.
        """
        return f"{self.prefix}idem:{scope_digest}"

    def tmp(self, name: str) -> str:
        """Scratch key that a script creates and deletes within one call."""
        return f"{self.tmp_prefix}{name}"
