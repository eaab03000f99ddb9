"""Outage grace at scale: the Redis time of the one script that grants it to every lease.

A private redis-server holds N providers with live leases (bench_snapshot's `details`); the
registry's pulse is then set as if no process had reached Redis for a minute, and one read
(`GET /providers/{id}`'s script) grants the grace. Reported: that call's wall time, Redis's
own time for it (INFO commandstats), and the same read without an outage, side by side.

    python bench/bench_grace.py --sizes 10000,100000
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings  # noqa: E402
from app.registry import Registry  # noqa: E402
from bench.bench_snapshot import fill  # noqa: E402
from bench.procs import RedisProc  # noqa: E402


def evalsha_usec(registry: Registry) -> float:
    """Return Redis's total microseconds in EVALSHA so far."""
    return float(registry.redis.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))


def timed_get(registry: Registry, provider_id: str) -> tuple[float, float]:
    """Run one read; return its wall seconds and Redis's seconds for it."""
    before = evalsha_usec(registry)
    started = time.perf_counter()
    registry.store.get(provider_id)
    wall = time.perf_counter() - started
    return wall, (evalsha_usec(registry) - before) / 1e6


def measure(size: int, rounds: int, workdir: Path) -> dict[str, float]:
    redis_proc = RedisProc(workdir, f"grace-{size}")
    redis_proc.start()
    try:
        settings = Settings(redis_url=redis_proc.url, redis_timeout_s=60, heartbeat_ttl_s=3600)
        registry = Registry.from_settings(settings)
        fill(registry, size)
        first = str(uuid.UUID(int=1))
        plain = [timed_get(registry, first)[1] for _ in range(rounds)]
        granted = []
        for _ in range(rounds):
            now_ms = int(registry.store.now_ms())
            registry.redis.set(registry.store.keys.pulse, now_ms - 60_000)
            wall, redis_s = timed_get(registry, first)
            granted.append((wall, redis_s))
        extended = registry.redis.zcard(registry.store.keys.grace)
        registry.close()
        if extended != size:
            raise RuntimeError(f"{extended} leases under grace, not {size}")
        return {
            "providers": size,
            "plain_us": statistics.median(plain) * 1e6,
            "grant_wall_s": statistics.median(w for w, _ in granted),
            "grant_redis_s": statistics.median(r for _, r in granted),
        }
    finally:
        redis_proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-grace-") as tmp:
        rows = [measure(int(size), args.rounds, Path(tmp)) for size in args.sizes.split(",")]
    print("| providers | a read (Redis time) | the read that grants grace: wall | Redis time |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['providers']:,} | {r['plain_us']:.0f} µs | {r['grant_wall_s']:.2f} s | {r['grant_redis_s']:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
