"""Benchmark the registry under gunicorn, next to the framework's floor, in one run.

Starts, all on loopback and on free ports: one private redis-server per fleet size, loaded with
that many providers; the registry under gunicorn with its real settings
(`gunicorn -c python:app.gunicorn_conf app.wsgi:app`) against each; and a bare Flask app with
one trivial JSON endpoint under the same worker settings (the floor). Then, in rounds whose
order rotates (the machine is shared and noisy), wrk measures: the floor's req/s, heartbeats
per second against each registry (`heartbeat@n`: `PUT .../status` with the provider's status;
`daemon@n`: the platform's Go daemon's own heartbeat, every GPU's live values in it), and the
latency of a selective query against each. It
prints medians over the rounds and ratios taken side by side within each round.

Settings (`--settings`): `production` (the default) serves as the registry ships: auth on,
every provider with its own token that its heartbeats send, rate limits on (set high enough
that the load does not reach them), the query sent with a service key; `trusted` turns auth
and limits off. Each heartbeat run also reports the Redis time and the Redis round trips per
heartbeat (INFO commandstats, with a script counted once: see `redis_cost`), and the largest
fleet one Redis core holds at a 10 s rhythm.

Needs wrk (Debian: `apt-get install -y wrk`) and redis-server on PATH.

Usage: python bench/bench_api.py [--sizes 10000,100000] [--rounds 5] [--seconds 5] ...
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

import fleet
from app.config import load_settings
from app.keyring import hash_secret
from loadgen import WrkResult, run_wrk, wrk_binary
from procs import Gunicorn, RedisProc

BENCH = Path(__file__).resolve().parent
HEARTBEAT_TARGET = 0.6  # heartbeats/s at least this share of the floor's req/s
HEARTBEAT_P99_TARGET_MS = 30.0
REDIS_US_TARGET = 15.0  # Redis time per heartbeat
RHYTHM_S = 10.0  # heartbeat interval of the fleet-per-Redis-core figure
BENCH_ADMIN_KEY = "bench-admin-key-0123456789abcdefghijklmnop"
# Requests per second no bench run reaches: limits stay in the loop without refusing.
HIGH_LIMIT = "1000000/second"
# Script calls: INFO commandstats also counts every command they run.
SCRIPT_CALLS = ("fcall", "fcall_ro", "evalsha", "eval", "evalsha_ro", "eval_ro")
PAGES_TARGET = 0.25  # query pages/s at the throughput runs' connections, at least this share of the floor's req/s
QUERY_P99_TARGET = 1.5  # the query's p99 at the largest size at most this times the smallest's


def parse_sizes(text: str) -> list[int]:
    """Parse "10000,100000" (or "10k,100k") into ascending distinct sizes."""
    sizes = set()
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        scale = 1000 if item.endswith("k") else 1
        try:
            value = int(item.removesuffix("k")) * scale
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a size: {item!r}") from None
        if not 1 <= value <= 1_000_000:
            raise argparse.ArgumentTypeError(f"size must be between 1 and 1,000,000, got {value}")
        sizes.add(value)
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size")
    return sorted(sizes)


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; every loop of the bench is bounded by these numbers."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes("10000,100000"),
                   help="fleet sizes, comma-separated (default 10000,100000)")
    p.add_argument("--rounds", type=_positive(int), default=5, help="measurement rounds (default 5)")
    p.add_argument("--seconds", type=_positive(float), default=5.0,
                   help="length of each wrk run in seconds (default 5)")
    p.add_argument("--warmup-seconds", type=_positive(float), default=2.0,
                   help="one unrecorded wrk run per target first (default 2)")
    p.add_argument("--wrk-threads", type=_positive(int), default=2,
                   help="wrk threads for the throughput runs (default 2)")
    p.add_argument("--wrk-connections", type=_positive(int), default=32,
                   help="wrk connections for the throughput runs: floor, heartbeats (default 32)")
    p.add_argument("--query-connections", type=_positive(int), default=4,
                   help="wrk connections for the query latency runs (default 4)")
    p.add_argument("--gpu-model", default="NVIDIA A100", help="the query's gpu_model")
    p.add_argument("--min-vram", type=_positive(int), default=80000, help="the query's min_vram (MB)")
    p.add_argument("--limit", type=_positive(int), default=50, help="the query's limit")
    p.add_argument("--worker-class", choices=("gevent", "gthread", "sync"), default=None,
                   help="gunicorn worker class for every instance (default: the registry's config)")
    p.add_argument("--workers", type=_positive(int), default=None,
                   help="gunicorn workers for every instance (default: the registry's config)")
    p.add_argument("--threads", type=_positive(int), default=None,
                   help="gunicorn threads per worker (default: the registry's config)")
    p.add_argument("--lease-ttl", type=_positive(float), default=86400.0,
                   help="lease TTL in seconds, long so that the fleet does not lapse mid-run")
    p.add_argument("--settings", choices=("production", "trusted"), default="production",
                   help="production: auth on, a token per provider, limits on but high (default); "
                   "trusted: auth and limits off")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic fleet")
    p.add_argument("--load-processes", type=_positive(int), default=4,
                   help="processes registering the fleet in parallel (default 4)")
    p.add_argument("--max-minutes", type=_positive(float), default=30.0,
                   help="stop measuring after this long, and report what was measured")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--keep-workdir", action="store_true",
                   help="keep the temporary directory (gunicorn logs, ID files)")
    args = p.parse_args(argv)
    if args.query_connections > 1000 or args.wrk_connections > 1000:
        p.error("at most 1000 connections")
    if args.wrk_connections < args.wrk_threads:
        p.error("--wrk-connections must be at least --wrk-threads")
    return args


def query_path(args: argparse.Namespace) -> str:
    """Return the path and query string of the selective query."""
    params = {"gpu_model": args.gpu_model, "min_vram": args.min_vram, "status": "idle", "limit": args.limit}
    return "/providers?" + urlencode(params)


def rotation(targets: list[str], round_index: int) -> list[str]:
    """Return the targets in this round's order: rotated by one each round."""
    shift = round_index % len(targets)
    return targets[shift:] + targets[:shift]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Run:
    """One recorded wrk run of one target in one round."""

    round: int
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    redis_us_per_request: float | None = None
    round_trips_per_request: float | None = None
    redis_us_by_command: dict[str, float] = field(default_factory=dict)
    # Redis's own CPU time (INFO cpu, user + system) per request: its command work, its I/O
    # and its event loop. Unlike commandstats' wall-clock µs, not inflated when the machine's
    # other processes preempt Redis mid-command; what one Redis core can serve follows from it.
    redis_cpu_us_per_request: float | None = None


def _median_by_key(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = {key for d in dicts for key in d}
    return {key: statistics.median([d.get(key, 0.0) for d in dicts]) for key in sorted(keys)}


def summarise(runs: list[Run], sizes: list[int]) -> dict[str, Any]:
    """Return medians per target, and the ratios taken within each round, then their median.

    A ratio is taken only between runs of the same round, so that a noisy round moves both
    sides of it together.
    """
    by_target: dict[str, list[Run]] = {}
    for run in runs:
        by_target.setdefault(run.target, []).append(run)
    targets = {
        name: {
            "rounds": len(rs),
            "rps": median([r.rps for r in rs]),
            "p50_ms": median([r.p50_ms for r in rs]),
            "p99_ms": median([r.p99_ms for r in rs]),
            "errors": sum(r.errors for r in rs),
            "redis_us_per_request": median([r.redis_us_per_request for r in rs if r.redis_us_per_request is not None]),
            "round_trips_per_request": median([r.round_trips_per_request for r in rs if r.round_trips_per_request is not None]),
            "redis_cpu_us_per_request": median([r.redis_cpu_us_per_request for r in rs if r.redis_cpu_us_per_request is not None]),
            "redis_us_by_command": _median_by_key([r.redis_us_by_command for r in rs]),
        }
        for name, rs in by_target.items()
    }
    rounds: dict[int, dict[str, Run]] = {}
    for run in runs:
        rounds.setdefault(run.round, {})[run.target] = run

    def ratios(top: str, bottom: str, attr: str) -> list[float]:
        return [
            getattr(r[top], attr) / getattr(r[bottom], attr)
            for r in rounds.values()
            if top in r and bottom in r and getattr(r[bottom], attr)
        ]

    out: dict[str, Any] = {"targets": targets, "heartbeat_vs_floor": {}, "daemon_vs_floor": {},
                           "pages_vs_floor": {}, "query_p99_growth": None}
    for n in sizes:
        values = ratios(f"pages@{n}", "floor", "rps")
        pages = targets.get(f"pages@{n}", {})
        out["pages_vs_floor"][n] = {
            "median": median(values), "min": min(values, default=None), "max": max(values, default=None),
            "met": bool(values) and median(values) >= PAGES_TARGET,
            "p99_ms": pages.get("p99_ms"), "redis_us": pages.get("redis_us_per_request"),
            "redis_cpu_us": pages.get("redis_cpu_us_per_request"),
        }
    # heartbeat@n: {"status": ...} from a provider token; daemon@n: the Go daemon's own body.
    for kind, n in [(kind, n) for kind in ("heartbeat", "daemon") for n in sizes]:
        values = ratios(f"{kind}@{n}", "floor", "rps")
        hb = targets.get(f"{kind}@{n}", {})
        redis_us = hb.get("redis_us_per_request")
        out[f"{kind}_vs_floor"][n] = {
            "median": median(values), "min": min(values, default=None), "max": max(values, default=None),
            "met": bool(values) and median(values) >= HEARTBEAT_TARGET,
            "p99_ms": hb.get("p99_ms"),
            "redis_us": redis_us,
            "round_trips": hb.get("round_trips_per_request"),
            "redis_cpu_us": hb.get("redis_cpu_us_per_request"),
            # One Redis core spends RHYTHM_S seconds of time per RHYTHM_S: that many heartbeats.
            "fleet_per_redis_core": int(RHYTHM_S * 1e6 / redis_us) if redis_us else None,
            "fleet_per_redis_core_cpu": (
                int(RHYTHM_S * 1e6 / hb["redis_cpu_us_per_request"]) if hb.get("redis_cpu_us_per_request") else None
            ),
        }
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        values = ratios(f"query@{large}", f"query@{small}", "p99_ms")
        p50 = ratios(f"query@{large}", f"query@{small}", "p50_ms")
        out["query_p99_growth"] = {
            "small": small, "large": large,
            "median": median(values), "min": min(values, default=None), "max": max(values, default=None),
            "p50_median": median(p50),
            "met": bool(values) and median(values) <= QUERY_P99_TARGET,
        }
    return out


# --- the run itself -------------------------------------------------------------------------


def _http(
    method: str, url: str, body: dict[str, Any] | None = None, auth: tuple[str, ...] = ()
) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    headers.update(dict(h.split(": ", 1) for h in auth))
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, dict(response.headers), json.loads(response.read() or b"null")


def machine() -> dict[str, Any]:
    """Describe the machine and the versions the figures depend on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    wrk_version = subprocess.run([wrk_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": redis_version.split("v=")[1].split()[0] if "v=" in redis_version else redis_version.strip(),
        "wrk": wrk_version.split()[1] if wrk_version else "unknown",
        "packages": {name: metadata.version(name) for name in ("flask", "gunicorn", "gevent", "redis", "hiredis", "marshmallow")},
        "loadavg_start": os.getloadavg(),
    }


def memory_report(client: Any, n: int, ids: list[tuple[str, str]], baseline: int, prefix: str) -> dict[str, Any]:
    """Measure Redis memory per provider: sampled keys (SAMPLES 0, exact) and INFO used_memory."""
    step = max(1, len(ids) // 200)
    sample = [pid for pid, _ in ids[::step]]
    hashes = [client.memory_usage(f"{prefix}provider:{pid}", samples=0) or 0 for pid in sample]
    leases = [client.memory_usage(f"{prefix}lease:{pid}", samples=0) for pid in sample]
    leases = [value for value in leases if value]
    used = int(client.info("memory")["used_memory"])
    index_bytes, index_keys = 0, 0
    by_kind: dict[str, int] = {}
    for key in client.scan_iter(match=f"{prefix}*", count=10_000):
        if not key.startswith((f"{prefix}provider:", f"{prefix}lease:")):
            size = client.memory_usage(key, samples=0) or 0
            kind = key[len(prefix):].split(":", 1)[0]  # gpu, status, events, leases, ...
            by_kind[kind] = by_kind.get(kind, 0) + size
            index_bytes += size
            index_keys += 1
    return {
        "n": n,
        "provider_hash_bytes_median": statistics.median(hashes),
        "provider_hash_bytes_mean": round(statistics.fmean(hashes)),
        "lease_key_bytes_median": statistics.median(leases) if leases else None,
        "index_keys": index_keys,
        "index_bytes_per_provider": round(index_bytes / n),
        "other_bytes_per_provider_by_kind": {k: round(v / n) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "used_memory": used,
        "used_memory_per_provider": round(used / n),
        "loaded_memory_per_provider": round((used - baseline) / n),
        "sampled": len(sample),
    }


def commandstats(client: Any) -> dict[str, tuple[int, int]]:
    """Return {command: (calls, usec)} from INFO commandstats."""
    out = {}
    for name, stats in client.info("commandstats").items():
        out[name.removeprefix("cmdstat_")] = (int(stats["calls"]), int(stats["usec"]))
    return out


def script_shares(client: Any, send: Any, count: int = 50) -> dict[str, float]:
    """Return, per command, the share of its calls sent by a client rather than run by a script.

    INFO commandstats counts a command that a script runs as well as the script call itself.
    MONITOR tells them apart (a script's commands come from "lua"): it watches `count`
    requests made by `send()`, outside any timed run.
    """
    top: dict[str, int] = {}
    inner: dict[str, int] = {}
    with client.monitor() as monitor:
        for _ in range(count):
            send()
        client.ping()  # the end marker: MONITOR shows commands in the order Redis ran them
        while True:
            seen = monitor.next_command()
            name = seen["command"].split(" ", 1)[0].lower().strip('"')
            if name == "ping" and seen.get("client_type") != "lua":
                break
            bucket = inner if seen.get("client_type") == "lua" else top
            bucket[name] = bucket.get(name, 0) + 1
    names = set(top) | set(inner)
    return {name: top.get(name, 0) / (top.get(name, 0) + inner.get(name, 0)) for name in names}


def redis_cpu_s(client: Any) -> float:
    """Return the CPU time Redis has used, user and system, in seconds."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def redis_cost(stats: dict[str, tuple[int, int]], shares: dict[str, float], requests: int) -> tuple[float, float]:
    """Return (µs of Redis time, round trips) per request, counting each script call once.

    A script call's time includes the commands it runs; a command also run by scripts counts
    only for the share of its calls that clients sent (`script_shares`). Commands the probe
    did not see count whole.
    """
    usec = calls = 0.0
    for name, (n, us) in stats.items():
        if name.startswith(("config", "info", "monitor", "ping")):
            continue
        share = 1.0 if name in SCRIPT_CALLS else shares.get(name, 1.0)
        usec += us * share
        calls += n * share
    return usec / requests, calls / requests


@contextlib.contextmanager
def services(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, Any]]:
    """Start and load everything; stop everything on the way out, whatever happened."""
    started: list[Any] = []
    gunicorn_env: dict[str, str] = {
        "REGISTRY_HEARTBEAT_TTL_S": str(args.lease_ttl),
        # A bench instance must not register itself in whatever Consul agent answers locally.
        "REGISTRY_CONSUL_ENABLED": "false",
    }
    production = args.settings == "production"
    if production:
        keys_file = workdir / "api-keys.json"
        keys_file.write_text(json.dumps([{"name": "bench-admin", "sha256": hash_secret(BENCH_ADMIN_KEY), "roles": ["admin"]}]))
        gunicorn_env.update({
            "REGISTRY_AUTH_ENABLED": "true",
            "REGISTRY_API_KEYS_FILE": str(keys_file),
            "REGISTRY_RATE_LIMIT_ENABLED": "true",
            "REGISTRY_RATE_LIMIT_PER_CLIENT": HIGH_LIMIT,
            "REGISTRY_RATE_LIMIT_HEARTBEAT": HIGH_LIMIT,
            "REGISTRY_RATE_LIMIT_UNAUTHENTICATED": HIGH_LIMIT,
        })
    else:
        # As on a trusted network: one wrk client would hit the per-client rate limit.
        gunicorn_env.update({"REGISTRY_AUTH_ENABLED": "false", "REGISTRY_RATE_LIMIT_ENABLED": "false"})
    if args.worker_class:
        gunicorn_env["REGISTRY_WORKER_CLASS"] = args.worker_class
    if args.workers:
        gunicorn_env["REGISTRY_WORKERS"] = str(args.workers)
    if args.threads:
        gunicorn_env["REGISTRY_THREADS"] = str(args.threads)
    fleets: dict[int, dict[str, Any]] = {}
    try:
        for n in args.sizes:
            server = RedisProc(workdir, str(n))
            started.append(server)
            server.start()
            client = server.client()
            baseline = int(client.info("memory")["used_memory"])
            print(f"loading {n} providers into redis on port {server.port} ...", flush=True)
            ids, seconds = fleet.load(
                server.url, n, seed=args.seed, processes=args.load_processes, lease_ttl_s=args.lease_ttl,
                tokens=production,
            )
            print(f"  loaded in {seconds:.1f} s ({n / seconds:.0f}/s)", flush=True)
            ids_file = workdir / f"heartbeat-ids-{n}.txt"
            # Offline providers send no heartbeats: the heartbeat mix is the live fleet.
            ids_file.write_text("".join(
                f"{pid} {status}" + (f" {fleet.token_for(args.seed, i)}" if production else "") + "\n"
                for i, (pid, status) in enumerate(ids) if status != "offline"
            ))
            # The Go daemon's heartbeats, as it sends them: every GPU's live values.
            daemon_file = workdir / f"daemon-heartbeats-{n}.txt"
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with daemon_file.open("w") as out:
                for i, (pid, status) in enumerate(ids):
                    if status != "offline":
                        token = fleet.token_for(args.seed, i) if production else "-"
                        body = json.dumps(fleet.daemon_heartbeat(fleet.member(args.seed, i), i, at), separators=(",", ":"))
                        out.write(f"{pid} {token} {body}\n")
            fleets[n] = {"redis": server, "client": client, "ids": ids, "ids_file": ids_file,
                         "daemon_file": daemon_file,
                         "baseline": baseline, "load_seconds": seconds}
        registries: dict[int, Gunicorn] = {}
        for n in args.sizes:
            instance = Gunicorn(
                f"registry-{n}", "python:app.gunicorn_conf", "app.wsgi:app",
                {**gunicorn_env, "REGISTRY_REDIS_URL": fleets[n]["redis"].url}, workdir,
            )
            started.append(instance)
            instance.start("/health")
            registries[n] = instance
        floor = Gunicorn("floor", str(BENCH / "floor_gunicorn_conf.py"), "floor_app:app", gunicorn_env, workdir)
        floor.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")]))
        started.append(floor)
        floor.start("/ping")
        served = load_settings(path=workdir / "config-probe.yaml", env={**os.environ, **gunicorn_env})
        serving = {"worker_class": served.worker_class, "workers": served.workers, "threads": served.threads}
        yield {"fleets": fleets, "registries": registries, "floor": floor, "serving": serving,
               "auth": (f"Authorization: Bearer {BENCH_ADMIN_KEY}",) if production else ()}
    finally:
        for fleet_run in fleets.values():
            fleet_run["client"].close()
        for thing in reversed(started):
            with contextlib.suppress(Exception):
                thing.stop()


def check(args: argparse.Namespace, env: dict[str, Any]) -> dict[int, int]:
    """Check that each side answers as it should before measuring; return the query totals."""
    status, _, body = _http("GET", env["floor"].base_url + "/ping")
    if status != 200 or body != {"status": "ok"}:
        raise RuntimeError(f"the floor answered {status} {body}")
    totals = {}
    for n, instance in env["registries"].items():
        index, (pid, state) = next((i, (p, s)) for i, (p, s) in enumerate(env["fleets"][n]["ids"]) if s != "offline")
        # As the provider's daemon: with its own token in production settings.
        daemon = (f"Authorization: Bearer {fleet.token_for(args.seed, index)}",) if env["auth"] else ()
        status, _, body = _http("PUT", f"{instance.base_url}/providers/{pid}/status", {"status": state}, daemon)
        if status != 200 or body["status"] != state:
            raise RuntimeError(f"heartbeat against registry-{n} answered {status} {body}")
        status, headers, page = _http("GET", instance.base_url + query_path(args), auth=env["auth"])
        wanted = args.gpu_model.casefold()
        for provider in page:
            fits = any(g["model_name"].casefold() == wanted and g["vram_mb"] >= args.min_vram for g in provider["gpus"])
            if provider["status"] != "idle" or not fits:
                raise RuntimeError(f"query against registry-{n} returned a provider that does not match: {provider['id']}")
        totals[n] = int(headers["X-Total-Count"])
        if len(page) != min(args.limit, totals[n]):
            raise RuntimeError(f"query against registry-{n} returned {len(page)} of {totals[n]}")
    return totals


def measure(args: argparse.Namespace, env: dict[str, Any], deadline: float) -> list[Run]:
    """Run every target once per round, in rotating order; stop early at the deadline."""
    threads, conns = args.wrk_threads, args.wrk_connections
    q_threads = min(args.wrk_threads, args.query_connections)
    plans: dict[str, tuple[str, str, dict[str, Any], Any]] = {
        "floor": (env["floor"].base_url + "/ping", "get.lua", {"threads": threads, "connections": conns}, None),
    }
    for n, instance in env["registries"].items():
        client = env["fleets"][n]["client"]
        ids_file = str(env["fleets"][n]["ids_file"])
        plans[f"heartbeat@{n}"] = (
            instance.base_url + "/", "heartbeat.lua",
            {"threads": threads, "connections": conns, "script_args": (ids_file, str(threads))}, client,
        )
        plans[f"daemon@{n}"] = (
            instance.base_url + "/", "daemon.lua",
            {"threads": threads, "connections": conns,
             "script_args": (str(env["fleets"][n]["daemon_file"]), str(threads))}, client,
        )
        plans[f"query@{n}"] = (
            instance.base_url + query_path(args), "get.lua",
            {"threads": q_threads, "connections": args.query_connections, "headers": env["auth"]}, client,
        )
        # The same query at the throughput runs' connections: pages per second.
        plans[f"pages@{n}"] = (
            instance.base_url + query_path(args), "get.lua",
            {"threads": threads, "connections": conns, "headers": env["auth"]}, client,
        )
    names = list(plans)
    for name in names:
        url, script, shape, _ = plans[name]
        run_wrk(url, script, seconds=args.warmup_seconds, **shape)
    # Which commands clients send and which scripts run, per route (see script_shares).
    shares: dict[str, dict[str, float]] = {}
    for n, instance in env["registries"].items():
        client = env["fleets"][n]["client"]
        index, (pid, state) = next((i, (p, s)) for i, (p, s) in enumerate(env["fleets"][n]["ids"]) if s != "offline")
        daemon = (f"Authorization: Bearer {fleet.token_for(args.seed, index)}",) if env["auth"] else ()
        url = f"{instance.base_url}/providers/{pid}/status"
        shares[f"heartbeat@{n}"] = script_shares(client, lambda: _http("PUT", url, {"status": state}, daemon))
        body = fleet.daemon_heartbeat(fleet.member(args.seed, index), index, "2026-11-29T10:00:00Z")
        daemon_url = f"{instance.base_url}/api/v1/providers/{pid}/heartbeat"
        shares[f"daemon@{n}"] = script_shares(client, lambda: _http("POST", daemon_url, body, daemon))
        query_url = instance.base_url + query_path(args)
        shares[f"query@{n}"] = script_shares(client, lambda: _http("GET", query_url, auth=env["auth"]), count=10)
        shares[f"pages@{n}"] = shares[f"query@{n}"]
    runs: list[Run] = []
    for round_index in range(args.rounds):
        for name in rotation(names, round_index):
            if time.monotonic() + args.seconds > deadline:
                print(f"time budget spent: stopping in round {round_index + 1}", flush=True)
                return runs
            url, script, shape, client = plans[name]
            if client is not None:
                client.config_resetstat()
                cpu_before = redis_cpu_s(client)
            result: WrkResult = run_wrk(url, script, seconds=args.seconds, **shape)
            run = Run(
                round=round_index, target=name, rps=result.rps, p50_ms=result.p50_us / 1000,
                p99_ms=result.p99_us / 1000, errors=result.errors, requests=result.requests,
            )
            if client is not None and result.requests:
                stats = commandstats(client)
                run.redis_us_per_request, run.round_trips_per_request = redis_cost(stats, shares[name], result.requests)
                run.redis_cpu_us_per_request = (redis_cpu_s(client) - cpu_before) * 1e6 / result.requests
                run.redis_us_by_command = {
                    cmd: round(usec / result.requests, 1) for cmd, (_, usec) in stats.items()
                    if usec / result.requests >= 1
                }
            runs.append(run)
            print(
                f"round {round_index + 1} {name:>18}: {run.rps:8.0f} req/s  p50 {run.p50_ms:7.2f} ms"
                f"  p99 {run.p99_ms:7.2f} ms  errors {run.errors}"
                + (f"  redis {run.redis_us_per_request:.1f} us/req (cpu {run.redis_cpu_us_per_request:.1f}),"
                   f" {run.round_trips_per_request:.2f} round trips"
                   if run.redis_us_per_request else ""),
                flush=True,
            )
    return runs


def render(report: dict[str, Any]) -> str:
    """Return the results as Markdown, ready for docs/PERFORMANCE.md."""
    m, s, a = report["machine"], report["summary"], report["args"]
    lines = [
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"Python {m['python']}, Redis {m['redis']}, wrk {m['wrk']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + f". Load average {m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at the end.",
        "",
        f"Served by gunicorn, registry and floor alike: worker class {report['serving']['worker_class']}, "
        f"{report['serving']['workers']} workers"
        + (f", {report['serving']['threads']} threads each" if report["serving"]["worker_class"] == "gthread" else "")
        + f". Lease TTL during the run: {a['lease_ttl']:g} s (so that the fleet does not lapse mid-run).",
        f"Rounds: {s['rounds_done']} of {a['rounds']}, {a['seconds']:g} s per wrk run; throughput runs "
        f"`wrk -t{a['wrk_threads']} -c{a['wrk_connections']}`, query runs with {a['query_connections']} connections.",
        f"Query: `GET {report['query']}`.",
        "Settings: " + (
            "production: auth on, a token per provider sent by its heartbeats, rate limits on at "
            f"{HIGH_LIMIT} (not reached), the query with a service key."
            if a["settings"] == "production" else "trusted: auth and rate limits off."
        ),
        "",
        "| target | req/s (median) | p50 ms | p99 ms | Redis µs/request | Redis CPU µs/request | Redis round trips/request | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in s["targets"].items():
        redis_us = f"{t['redis_us_per_request']:.1f}" if t["redis_us_per_request"] is not None else "–"
        trips = f"{t['round_trips_per_request']:.2f}" if t.get("round_trips_per_request") is not None else "–"
        cpu = f"{t['redis_cpu_us_per_request']:.1f}" if t.get("redis_cpu_us_per_request") is not None else "–"
        lines.append(
            f"| {name} | {t['rps']:.0f} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} | {redis_us} | {cpu} | {trips} | {t['errors']} |"
        )
    for name, t in s["targets"].items():
        parts = {cmd: us for cmd, us in t["redis_us_by_command"].items() if cmd not in SCRIPT_CALLS and us >= 1}
        if parts:
            top = sorted(parts.items(), key=lambda item: -item[1])[:6]
            lines.append(f"- Inside {name}'s script, µs/request: " + ", ".join(f"{c} {u:.0f}" for c, u in top))
    lines += ["", "| fleet | load s | matches | hash B (SAMPLES 0) | indexes B/provider | used_memory B/provider |",
              "|---:|---:|---:|---:|---:|---:|"]
    for n, f in report["fleets"].items():
        mem = f["memory"]
        lines.append(
            f"| {int(n):,} | {f['load_seconds']:.1f} | {f['query_total']:,} | {mem['provider_hash_bytes_median']:.0f} "
            f"| {mem['index_bytes_per_provider']} | {mem['used_memory_per_provider']} |"
        )
    for n, f in report["fleets"].items():
        kinds = f["memory"]["other_bytes_per_provider_by_kind"]
        lines.append(f"- Keys other than provider hashes and leases at {int(n):,}, B/provider: "
                     + ", ".join(f"{k} {v}" for k, v in kinds.items() if v))
    lines.append("")
    for label, n, r in [("Heartbeats", n, r) for n, r in s["heartbeat_vs_floor"].items()] + [
        ("The daemon's heartbeats", n, r) for n, r in s.get("daemon_vs_floor", {}).items()
    ]:
        if r["median"] is None:
            continue
        lines.append(
            f"- {label} at {int(n):,} / floor: median {r['median']:.2f} (rounds {r['min']:.2f}–{r['max']:.2f}); "
            f"target ≥ {HEARTBEAT_TARGET}: {'met' if r['met'] else 'NOT met'}."
            + (f" p99 {r['p99_ms']:.1f} ms (target < {HEARTBEAT_P99_TARGET_MS:g})." if r.get("p99_ms") is not None else "")
            + (
                f" Redis {r['redis_us']:.1f} µs (target ≤ {REDIS_US_TARGET:g}) in {r['round_trips']:.2f} round trips "
                f"per heartbeat: one Redis core holds {r['fleet_per_redis_core']:,} providers at a {RHYTHM_S:g} s rhythm"
                + (f" ({r['fleet_per_redis_core_cpu']:,} by Redis's CPU time, {r['redis_cpu_us']:.1f} µs per heartbeat)."
                   if r.get("fleet_per_redis_core_cpu") else ".")
                if r.get("redis_us") else ""
            )
        )
    for n, r in s.get("pages_vs_floor", {}).items():
        if r["median"] is None:
            continue
        lines.append(
            f"- Query pages at {int(n):,} / floor: median {r['median']:.2f} (rounds {r['min']:.2f}–{r['max']:.2f}); "
            f"target ≥ {PAGES_TARGET}: {'met' if r['met'] else 'NOT met'}. p99 {r['p99_ms']:.1f} ms"
            + (f", Redis {r['redis_us']:.0f} µs per page ({r['redis_cpu_us']:.0f} µs of CPU)." if r.get("redis_us") else ".")
        )
    g = s["query_p99_growth"]
    if g and g["median"] is not None:
        lines.append(
            f"- Query p99 at {g['large']:,} / at {g['small']:,}: median {g['median']:.2f} "
            f"(rounds {g['min']:.2f}–{g['max']:.2f}; p50 ratio {g['p50_median']:.2f}); "
            f"target ≤ {QUERY_P99_TARGET}: {'met' if g['met'] else 'NOT met'}."
        )
    return "\n".join(lines)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Stopped by a signal, the bench still stops what it started (the finally blocks run);
    # a shell that started it in the background may have left SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        wrk_binary()
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH: apt-get install -y redis-server")
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    deadline = started + args.max_minutes * 60
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    print(f"work directory {workdir}", flush=True)
    try:
        with services(args, workdir) as env:
            totals = check(args, env)
            serving = env["serving"]
            runs = measure(args, env, deadline)
            fleets = {
                n: {
                    "load_seconds": round(f["load_seconds"], 1),
                    "query_total": totals[n],
                    "memory": memory_report(f["client"], n, f["ids"], f["baseline"], "registry:"),
                }
                for n, f in env["fleets"].items()
            }
    finally:
        if args.keep_workdir:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    summary = summarise(runs, args.sizes)
    summary["rounds_done"] = len({r.round for r in runs})
    report = {
        "machine": info,
        "command": " ".join([Path(sys.executable).name, "bench/bench_api.py", *(argv if argv is not None else sys.argv[1:])]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "query": query_path(args),
        "serving": serving,
        "fleets": fleets,
        "summary": summary,
        "runs": [asdict(r) for r in runs],
        "seconds": round(time.monotonic() - started),
    }
    print()
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    # A missed target is a finding to report, not a failure of the bench.
    return 0


if __name__ == "__main__":
    sys.exit(main())
