"""Bring a Redis written by an older version of the registry up to the current key layout.

The layout version is kept in Redis (`Keys.layout`); each step is idempotent, so that two
instances migrating at once, or a migration cut short, do no harm.
"""
from __future__ import annotations

import logging

from .providers import ProviderStore
from .scripts import load_script, wrap_errors

log = logging.getLogger(__name__)

# 1: the first release. 2: GPU model and architecture catalogs (substring filters).
LAYOUT_VERSION = 2
BATCH = 1000


@wrap_errors
def migrate(store: ProviderStore) -> int:
    """Migrate the store's data to LAYOUT_VERSION; return the version it was at."""
    client, keys = store.redis, store.keys
    found = client.get(keys.layout)
    version = int(found) if found else (1 if client.exists(keys.providers) else LAYOUT_VERSION)
    if version < 2:
        _catalog_every_provider(store)
        log.info("store migrated", extra={"from_layout": version, "to_layout": LAYOUT_VERSION})
    if version < LAYOUT_VERSION or found is None:
        client.set(keys.layout, LAYOUT_VERSION)
    return version


def _catalog_every_provider(store: ProviderStore) -> None:
    script = load_script(store.redis, "catalog")
    after = "-"
    while True:
        ids = store.redis.zrangebylex(store.keys.providers, after, "+", start=0, num=BATCH)
        if not ids:
            return
        store.run_script(script, [], ids)
        after = f"({ids[-1]}"
