"""Redis time of one heartbeat, alone on a private redis-server, next to the floor of its commands.

On a 2-core machine under load, INFO commandstats' microseconds grow with whatever preempts
Redis mid-command (bench_api.py reports them under load, and Redis's CPU time beside them).
This bench measures the heartbeat FUNCTION with nothing else running: one client sends
heartbeats in production settings (a token per provider, the heartbeat limit on) to a fleet
of `bench/fleet.py`, and INFO commandstats gives the FUNCTION's µs per call (its commands'
time is inside it). Side by side in the same run, on the same Redis, the floor: a bare
FUNCTION that runs the same five commands a plain renewal needs (TIME, HMGET of the same
fields, SET of the lease key with PX, ZADD, HSET) with the same arguments and no logic, so
that the difference is what the registry's Lua adds. Two heartbeat kinds: `plain` (no body,
or the status the provider has) and `daemon` (the Go daemon's complete live GPU values).

Usage: python bench/bench_heartbeat_redis.py [--providers 2000] [--calls 10000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import fleet
from app.keyring import hash_secret
from app.rules import LIVE_GPU_FIELDS
from app.store import Keys, ProviderStore
from procs import RedisProc

FLOOR_LIBRARY = """#!lua name=bench_floor
redis.register_function('bench_floor', function(keys, argv)
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  local id = argv[9]
  local v = redis.call('HMGET', argv[1] .. id, 'status', 'lease_expires_at', 'claim_id',
    'claim_expires_at', 'claim_confirmed', 'version', 'grace_until', 'token_hash',
    'heartbeat_windows', 'gpu_keys')
  redis.call('SET', argv[3] .. id, now, 'PX', 30000)
  redis.call('ZADD', keys[2], now + 30000, id)
  redis.call('HSET', argv[1] .. id, 'last_seen_at', now, 'lease_expires_at', now + 30000)
  return {1, now, {v[1], now, now + 30000, v[6]}}
end)
"""


def usec_per_call(client: Any, command: str, send: Callable[[int], Any], calls: int) -> float:
    """Return INFO commandstats' µs per call of `command` over `calls` calls of send(i)."""
    client.config_resetstat()
    for i in range(calls):
        send(i)
    return float(client.info("commandstats")[f"cmdstat_{command}"]["usec_per_call"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--providers", type=int, default=2000)
    p.add_argument("--calls", type=int, default=10000, help="heartbeats per measurement")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-hb-redis-") as workdir:
        server = RedisProc(Path(workdir), "hb")
        server.start()
        try:
            client = server.client()
            store = ProviderStore(client, Keys(), 30, blind_after_s=2, heartbeat_limits=[(1_000_000, 60)])
            token = hash_secret("bench-token")
            members = [fleet.member(1, i) for i in range(args.providers)]
            for member in members:
                store.register(member.id, member.body, "idle", token_hash=token)
            client.function_load(FLOOR_LIBRARY, replace=True)
            library = store._functions
            assert library.usable()

            def metrics(member: fleet.Member) -> list[dict[str, Any]]:
                return [{name: (gpu.get("is_healthy", True) if name == "is_healthy" else 50) for name in LIVE_GPU_FIELDS}
                        for gpu in member.body["gpus"]]

            daemon_metrics = [metrics(m) for m in members]
            n = len(members)
            kinds: dict[str, Callable[[int], Any]] = {
                "plain": lambda i: store.heartbeat(members[i % n].id, None, None, "", token),
                "daemon": lambda i: store.heartbeat(members[i % n].id, None, daemon_metrics[i % n], "", token),
                "floor": lambda i: library._command(
                    "FCALL", "bench_floor", len(store.ctx.keys), *store.ctx.keys, *store.ctx.args,
                    *store.heartbeat_args(members[i % n].id, None, None, "", token)),
            }
            results: dict[str, list[float]] = {kind: [] for kind in kinds}
            for _ in range(args.rounds):
                for kind, send in kinds.items():
                    results[kind].append(usec_per_call(client, "fcall", send, args.calls))
        finally:
            server.stop()
    medians = {kind: statistics.median(values) for kind, values in results.items()}
    print(f"Redis µs per call, medians of {args.rounds} rounds of {args.calls} calls, {args.providers} providers:")
    for kind, value in medians.items():
        spread = f"{min(results[kind]):.1f}-{max(results[kind]):.1f}"
        print(f"  {kind:7s} {value:6.1f} µs  (rounds {spread})")
    print(f"  plain / floor: {medians['plain'] / medians['floor']:.2f}; "
          f"one Redis core at a 10 s rhythm: {int(10e6 / medians['plain']):,} plain, "
          f"{int(10e6 / medians['daemon']):,} daemon heartbeats' providers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
