"""Benchmark the in-place migration from layout 2 to layout 3, and the memory of both.

Loads a synthetic fleet (bench/fleet.py, through ProviderStore) into a private redis-server,
rewrites every provider's GPUs as layout 2 kept them (one JSON list in `gpus`; for a share of
the fleet, the Go daemon's last complete metrics apart in `gpu_live`, as a JSON list), then
times `migrate()` and checks that every provider reads the same as before. Memory is
`used_memory` per provider in each layout.

Usage: .venv/bin/python bench/bench_migration.py [--size 100000] [--daemon-share 0.5]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson

import fleet
from app.gpu_fragments import gpus_of
from app.models import Provider
from app.rules import LIVE_GPU_FIELDS
from app.store import Keys, ProviderStore
from app.store.migrations import migrate
from procs import RedisProc

BATCH = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--daemon-share", type=float, default=0.5,
                   help="share of providers whose layout-2 hash holds the daemon's metrics apart")
    p.add_argument("--load-processes", type=int, default=2)
    return p.parse_args(argv)


def used_memory(client) -> int:  # type: ignore[no-untyped-def]
    return int(client.info("memory")["used_memory"])


def to_layout_2(client, ids: list[str], share: float) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the providers' GPUs as layout 2 kept them."""
    rng = random.Random(2)
    for start in range(0, len(ids), BATCH):
        batch = ids[start:start + BATCH]
        pipe = client.pipeline(transaction=False)
        for pid in batch:
            pipe.hgetall(f"registry:provider:{pid}")
        hashes = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for pid, fields in zip(batch, hashes):
            gpus = gpus_of(fields)
            key = f"registry:provider:{pid}"
            pipe.hdel(key, "gpu_specs", "gpu_live")
            if rng.random() < share:
                live = [{name: gpu[name] for name in LIVE_GPU_FIELDS if name in gpu} for gpu in gpus]
                pipe.hset(key, mapping={"gpus": orjson.dumps(gpus), "gpu_live": orjson.dumps(live)})
            else:
                pipe.hset(key, "gpus", orjson.dumps(gpus))
        pipe.execute()
    client.set("registry:layout", 2)


def views(client, ids: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    pipe = client.pipeline(transaction=False)
    for pid in ids:
        pipe.hgetall(f"registry:provider:{pid}")
    return [orjson.dumps(Provider.from_hash(h).to_json(0)).decode() for h in pipe.execute()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = RedisProc(Path(tempfile.mkdtemp(prefix="bench-migration-")), "migration")
    server.start()
    try:
        client = server.client()
        baseline = used_memory(client)
        loaded, load_s = fleet.load(server.url, args.size, processes=args.load_processes)
        ids = [pid for pid, _ in loaded]
        print(f"loaded {len(ids)} providers in {load_s:.1f} s", flush=True)
        layout_3 = used_memory(client)
        sample = random.Random(3).sample(ids, min(2000, len(ids)))
        before = views(client, sample)
        to_layout_2(client, ids, args.daemon_share)
        layout_2 = used_memory(client)
        store = ProviderStore(client, Keys(), lease_ttl_s=30)
        started = time.perf_counter()
        found = migrate(store)
        took = time.perf_counter() - started
        after = views(client, sample)
        pipe = client.pipeline(transaction=False)
        for pid in ids:
            pipe.hexists(f"registry:provider:{pid}", "gpus")
        left = sum(pipe.execute())
        result = {
            "size": args.size, "from_layout": found, "migrate_s": round(took, 2),
            "providers_per_s": round(args.size / took),
            "same_answers": before == after, "left_in_layout_2": left,
            "used_memory_per_provider": {
                "layout_2": round((layout_2 - baseline) / args.size),
                "layout_3": round((layout_3 - baseline) / args.size),
            },
        }
        print(json.dumps(result), flush=True)
        return 0 if before == after and not left else 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
