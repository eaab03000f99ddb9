"""Bring a Redis written by an older version of the registry up to the current key layout.

The layout version is kept in Redis (`Keys.layout`); each step is idempotent, so that two
instances migrating at once, or a migration cut short, do no harm.
"""
from __future__ import annotations

import logging

from ..gpu_fragments import legacy_gpus, split_gpus
from .providers import ProviderStore
from .scripts import load_script, wrap_errors

log = logging.getLogger(__name__)

# 1: the first release. 2: GPU model and architecture catalogs (substring filters).
# 3: each GPU as ready-made JSON fragments, specs and live values apart (gpu_fragments.py).
LAYOUT_VERSION = 3
BATCH = 1000
# A provider whose GPUs change between the read and the write of a pass (a heartbeat) is
# read again; after this many passes it is left as it is (readers understand both layouts).
PASSES = 5


@wrap_errors
def migrate(store: ProviderStore) -> int:
    """Migrate the store's data to LAYOUT_VERSION; return the version it was at."""
    client, keys = store.redis, store.keys
    found = client.get(keys.layout)
    version = int(found) if found else (1 if client.exists(keys.providers) else LAYOUT_VERSION)
    if version < 2:
        _each_batch(store, _catalog(store))
    if version < 3:
        left = _each_batch(store, _fragment_gpus(store))
        if left:
            log.warning("providers left in the old GPU layout", extra={"providers": left})
    if version < LAYOUT_VERSION:
        log.info("store migrated", extra={"from_layout": version, "to_layout": LAYOUT_VERSION})
    if version < LAYOUT_VERSION or found is None:
        client.set(keys.layout, LAYOUT_VERSION)
    return version


def _each_batch(store: ProviderStore, step) -> int:  # type: ignore[no-untyped-def]
    """Run `step` on every provider ID, a batch at a time; return the sum of what it returns."""
    after, total = "-", 0
    while True:
        ids = store.redis.zrangebylex(store.keys.providers, after, "+", start=0, num=BATCH)
        if not ids:
            return total
        total += step(ids)
        after = f"({ids[-1]}"


def _catalog(store: ProviderStore):  # type: ignore[no-untyped-def]
    script = load_script(store.redis, "catalog")

    def step(ids: list[str]) -> int:
        store.run_script(script, [], ids)
        return 0

    return step


def _fragment_gpus(store: ProviderStore):  # type: ignore[no-untyped-def]
    script = load_script(store.redis, "gpu_fragments")

    def step(ids: list[str]) -> int:
        """Rewrite a batch; return how many providers it had to leave as they were."""
        for _ in range(PASSES):
            args: list[str] = []
            for provider_id, (gpus, live) in zip(ids, _read(store, ids)):
                if gpus is None:
                    continue  # gone, or already in layout 3
                try:
                    fields = split_gpus(legacy_gpus(gpus, live))
                except (ValueError, TypeError, AttributeError):
                    log.warning("provider's GPUs unreadable: left as they are", extra={"provider_id": provider_id})
                    continue
                args += [provider_id, gpus, live or "", fields["gpu_specs"], fields["gpu_live"]]
            if not args or store.run_script(script, [], args) == len(args) // 5:
                return 0
        return sum(1 for gpus, _ in _read(store, ids) if gpus is not None)

    return step


def _read(store: ProviderStore, ids: list[str]) -> list[list[str | None]]:
    """Return the layout-2 `gpus` and `gpu_live` of providers, in one round trip."""
    pipe = store.redis.pipeline(transaction=False)
    for provider_id in ids:
        pipe.hmget(store.keys.provider(provider_id), "gpus", "gpu_live")
    return pipe.execute()  # type: ignore[no-any-return]
