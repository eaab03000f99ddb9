"""Benchmark scheduling: the claim rate under contention, and heartbeats while long polls wait.

Starts, on loopback and free ports: a private redis-server loaded with N providers (default
10,000, the fleet of bench_api), the registry under gunicorn with its real settings, and the
bare Flask floor under the same worker settings. Then, in rounds:

- claims: 8 client processes claim one matching provider at a time for a fixed time
  (`POST /providers/claim`, count 1, a 10-minute claim); the fleet is reloaded between rounds
  so that every round starts with the same free providers;
- heartbeats with wrk, once with nothing else going on and once while 50 long polls of the
  feed wait (`GET /providers/events?after=...&wait=30`), next to the floor's req/s.

It prints medians over the rounds and ratios taken side by side within each round.

Usage: python bench/bench_scheduling.py [--providers 10000] [--rounds 3] [--seconds 5]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import fleet
from loadgen import run_wrk
from procs import Gunicorn, RedisProc

BENCH = Path(__file__).resolve().parent
CLAIMERS = 8
LONG_POLLS = 50
ENV = {
    "REGISTRY_HEARTBEAT_TTL_S": "86400",
    "REGISTRY_CONSUL_ENABLED": "false",
    # As bench_api: the core path, on a trusted network (bench_trust measures auth's cost).
    "REGISTRY_AUTH_ENABLED": "false",
    "REGISTRY_RATE_LIMIT_ENABLED": "false",
}
# Any healthy GPU with 16 GB or more: about half the fleet's idle providers, enough that a
# round never runs out (a refusal would measure the 409 path instead).
CLAIM_BODY = json.dumps({"min_vram": 16000, "healthy_only": True, "count": 1, "claim_ttl_s": 600,
                         "claimant": "bench"}).encode()


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def _claimer(args: tuple[str, float]) -> tuple[int, int]:
    """Claim until the deadline; return (claims granted, claims refused with 409)."""
    url, deadline = args
    granted = refused = 0
    while time.time() < deadline:
        status = _post(f"{url}/providers/claim", CLAIM_BODY)
        if status == 200:
            granted += 1
        elif status == 409:
            refused += 1
        else:
            raise RuntimeError(f"claim answered {status}")
    return granted, refused


def claim_rate(url: str, seconds: float) -> tuple[float, int]:
    """Claims per second granted to CLAIMERS processes claiming at once."""
    deadline = time.time() + seconds
    with multiprocessing.get_context("spawn").Pool(CLAIMERS) as pool:
        results = pool.map(_claimer, [(url, deadline)] * CLAIMERS)
    granted = sum(g for g, _ in results)
    return granted / seconds, sum(r for _, r in results)


@contextlib.contextmanager
def long_polls(url: str, n: int):
    """Keep `n` long polls of the feed waiting (re-issued when one returns) until exit."""
    stop = threading.Event()
    position = json.load(urllib.request.urlopen(f"{url}/providers/events", timeout=10))["next"]

    def poll() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                urllib.request.urlopen(f"{url}/providers/events?after={position}&wait=30", timeout=40).read()

    threads = [threading.Thread(target=poll, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # let them all reach the server and wait
    try:
        yield
    finally:
        stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-scheduling-"))
    started: list = []
    rows: list[dict[str, float]] = []
    try:
        redis_server = RedisProc(workdir, "scheduling")
        started.append(redis_server)
        redis_server.start()
        client = redis_server.client()
        ids, _ = fleet.load(redis_server.url, args.providers, processes=4)
        ids_file = workdir / "ids.txt"
        ids_file.write_text("".join(f"{pid} {status}\n" for pid, status in ids if status != "offline"))
        registry = Gunicorn("registry", "python:app.gunicorn_conf", "app.wsgi:app",
                            {**ENV, "REGISTRY_REDIS_URL": redis_server.url}, workdir)
        started.append(registry)
        registry.start("/health")
        floor = Gunicorn("floor", str(BENCH / "floor_gunicorn_conf.py"), "floor_app:app", ENV, workdir)
        floor.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")]))
        started.append(floor)
        floor.start("/ping")
        wrk = {"seconds": args.seconds, "threads": 2, "connections": 32}
        for round_no in range(1, args.rounds + 1):
            row: dict[str, float] = {}
            row["floor"] = run_wrk(floor.base_url + "/ping", "get.lua", **wrk).rps
            row["heartbeats"] = run_wrk(registry.base_url + "/", "heartbeat.lua",
                                        script_args=(str(ids_file), "2"), **wrk).rps
            with long_polls(registry.base_url, LONG_POLLS):
                row["heartbeats_polls"] = run_wrk(registry.base_url + "/", "heartbeat.lua",
                                                  script_args=(str(ids_file), "2"), **wrk).rps
            row["claims"], refused = claim_rate(registry.base_url, args.seconds)
            # Same free providers every round: reload the fleet over the claimed one.
            client.flushall()
            fleet.load(redis_server.url, args.providers, processes=4)
            rows.append(row)
            print(f"round {round_no}: floor {row['floor']:.0f}/s, heartbeats {row['heartbeats']:.0f}/s, "
                  f"with {LONG_POLLS} long polls {row['heartbeats_polls']:.0f}/s, "
                  f"claims {row['claims']:.0f}/s ({refused} refused)", flush=True)
    finally:
        for thing in reversed(started):
            with contextlib.suppress(Exception):
                thing.stop()

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    def ratio(key: str) -> float:
        return statistics.median(r[key] / r["floor"] for r in rows)

    print(f"\n{args.providers} providers, {len(rows)} rounds of {args.seconds:g} s, medians:")
    print(f"  floor (trivial JSON)            {median('floor'):8.0f} req/s")
    print(f"  heartbeats                      {median('heartbeats'):8.0f} req/s   {ratio('heartbeats'):.2f}x floor")
    print(f"  heartbeats, {LONG_POLLS} long polls waiting {median('heartbeats_polls'):8.0f} req/s   "
          f"{ratio('heartbeats_polls'):.2f}x floor")
    print(f"  claims, {CLAIMERS} concurrent claimers   {median('claims'):8.0f} claims/s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    sys.exit(main())
