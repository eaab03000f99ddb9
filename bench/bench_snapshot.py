"""Benchmark of the PostgreSQL snapshot and restore (docs/PERFORMANCE.md, "Snapshot and restore").

Fills a private redis-server with N providers of 8 GPUs each through the store's own write
script, then times, on a database made for the run (dropped at the end):

- the first snapshot (every row added), a snapshot with nothing changed, and a snapshot after
  every provider heartbeat (every row changed: the steady state of a live registry);
- a restore into an emptied Redis.

Usage: python bench/bench_snapshot.py [--providers 100000] [--rounds 3] [--pg-admin-url URL]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import Settings  # noqa: E402
from app.registry import Registry  # noqa: E402
from app.snapshot import restore, take_snapshot  # noqa: E402
from app.snapshot.progress import Progress  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

MODELS = [("NVIDIA A100", 81920, "ampere"), ("NVIDIA H100", 81920, "hopper"),
          ("NVIDIA L40S", 49152, "ada"), ("RTX 4090", 24576, "ada")]


def details(i: int) -> dict[str, Any]:
    """A provider with 8 GPUs of one model (one in 50 mixed), about 1 KB of GPU JSON."""
    model, vram, arch = MODELS[i % len(MODELS)]
    gpus = [
        {"model_name": model, "vram_mb": vram, "driver_version": "550.54.15", "architecture": arch,
         "compute_capability": "8.9", "cuda_cores": 16384, "tensor_cores": 512, "is_healthy": True}
        for _ in range(8)
    ]
    if i % 50 == 0:
        gpus[7] = {**gpus[7], "model_name": "RTX 4090", "vram_mb": 24576}
    return {
        "owner_id": f"owner-{i % 997}", "name": f"rig-{i}", "hostname": f"rig-{i}.example.net",
        "ip_address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
        "location": ["eu-west", "us-east", "ap-south"][i % 3], "gpus": gpus,
        "metadata": {"rack": f"r{i % 40}", "tier": "standard"},
    }


def fill(registry: Registry, n: int, batch: int = 1000) -> None:
    """Register n providers through the store's write script, pipelined (as register() does)."""
    store = registry.store
    for start in range(0, n, batch):
        pipe = registry.redis.pipeline(transaction=False)
        for i in range(start, min(n, start + batch)):
            provider_id = str(uuid.UUID(int=i + 1))
            store.register(provider_id, details(i), "idle", pipeline=pipe)
        pipe.execute()


def heartbeat_all(registry: Registry, n: int, batch: int = 1000) -> None:
    """Heartbeat every provider once (new last_seen_at and lease: every row changes)."""
    store = registry.store
    for start in range(0, n, batch):
        pipe = registry.redis.pipeline(transaction=False)
        for i in range(start, min(n, start + batch)):
            pid = str(uuid.UUID(int=i + 1))
            store.heartbeat(pid, pipeline=pipe)
        pipe.execute()


def show(took: dict[str, float]) -> str:
    return (f"{took['wall']:6.2f} s (CPU s: python {took['python']:.2f}, redis {took['redis']:.2f}, "
            f"postgres {took['postgres']:.2f})")


def quiet(what: str, total: int) -> Progress:
    return Progress(what, total, stream=None, interval_s=3600)


class BackendCpu:
    """CPU seconds of the PostgreSQL backends serving `database`, sampled from /proc.

    A backend exits with its connection, so a thread samples every 50 ms and keeps the last
    figure of each process (the last 50 ms of a backend may be missed).
    """

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, database: str) -> None:
        self.database = database
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if not cmdline.startswith(b"postgres: ") or self.database.encode() not in cmdline:
                        continue
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                self.seen[int(pid)] = (int(fields[11]) + int(fields[12])) / self.TICK

    def __enter__(self) -> "BackendCpu":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.seen.values())


def redis_cpu(registry: Registry) -> float:
    info = registry.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(registry: Registry, database: str, fn: Callable[[], Any]) -> tuple[dict[str, float], Any]:
    """Run fn; return its wall time and the CPU seconds of this process, Redis and PostgreSQL."""
    cpu, redis_before = own_cpu(), redis_cpu(registry)
    started = time.perf_counter()
    with BackendCpu(database) as backend:
        result = fn()
    wall = time.perf_counter() - started
    return {"wall": wall, "python": own_cpu() - cpu, "redis": redis_cpu(registry) - redis_before,
            "postgres": backend.seconds}, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--providers", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    name = f"registry_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    database_url = args.pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    server = RedisServer()
    server.start()
    # Leases outlive the run, so that a snapshot sees the statuses the fill and heartbeats set.
    registry = Registry.from_settings(
        Settings(redis_url=server.url, redis_timeout_s=30, heartbeat_ttl_s=3600, heartbeat_interval_s=10)
    )
    figures: dict[str, list[dict[str, float]]] = {"first": [], "unchanged": [], "changed": [], "restore": []}
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    try:
        started = time.perf_counter()
        fill(registry, args.providers)
        print(f"filled {args.providers} providers x 8 GPUs in {time.perf_counter() - started:.1f} s; "
              f"redis used_memory {registry.redis.info('memory')['used_memory_human']}")
        for round_ in range(args.rounds):
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("DROP SCHEMA public CASCADE")
                conn.execute("CREATE SCHEMA public")
            registry.redis.delete(registry.store.keys.generation)
            for label, before in (("first", None), ("unchanged", None),
                                  ("changed", lambda: heartbeat_all(registry, args.providers))):
                if before:
                    before()
                took, result = timed(registry, name, lambda: take_snapshot(registry.store, database_url, progress=quiet))
                assert result is not None and result.providers == args.providers, result
                figures[label].append(took)
                print(f"round {round_ + 1} snapshot {label:9s} {show(took)}  {result.summary()}")
            registry.redis.flushall()
            took, result = timed(registry, name, lambda: restore(registry.store, database_url, progress=quiet))
            assert result.restored == args.providers and registry.store.count() == args.providers
            figures["restore"].append(took)
            print(f"round {round_ + 1} restore            {show(took)}")
        with psycopg.connect(database_url) as conn:
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('providers'))").fetchone()[0]
            compression = conn.execute(
                "SELECT attcompression FROM pg_attribute"
                " WHERE attrelid = 'providers'::regclass AND attname = 'redis_hash'"
            ).fetchone()[0]
    finally:
        registry.close()
        server.stop()
        with psycopg.connect(args.pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print(f"\nproviders table: {size}, redis_hash compression: {'lz4' if compression == 'l' else 'pglz'}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    targets = {"first": 5.0, "unchanged": 5.0, "changed": 5.0, "restore": 5.0}  # issue 12
    print(f"{'run':10s} {'wall s':>7s} {'min s':>6s} {'of target':>9s} {'CPU s: python':>14s} "
          f"{'redis':>6s} {'postgres':>8s}   (medians of {args.rounds})")
    for label, runs in figures.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{label:10s} {med['wall']:7.2f} {min(r['wall'] for r in runs):6.2f} "
              f"{med['wall'] / targets[label]:9.0%} {med['python']:14.2f} {med['redis']:6.2f} "
              f"{med['postgres']:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"providers": args.providers, "seconds": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
