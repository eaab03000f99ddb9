"""Benchmark one selective page: the registry next to PostgreSQL on the same fleet, and memory.

Loads a synthetic fleet (bench/fleet.py, through ProviderStore) into a private redis-server,
copies the same providers into a PostgreSQL database it creates (and drops at the end), then
measures, in rounds that alternate the two:

- the selective page (`gpu_model`, `min_vram`, `status=idle`, `limit`) through the registry's
  WSGI app in-process (Flask test client: routing, schema, store, JSON; no gunicorn, no socket),
  and the same page from PostgreSQL's indexed query with psycopg (JSON payload as text);
- Redis time per page: INFO commandstats around the registry's pages (the script call and
  the HMGET of each row; see redis_usage), and Redis's CPU time (INFO cpu, which also counts
  the sockets' reads and writes);
- memory per provider: MEMORY USAGE ... SAMPLES 0 summed over every key of the registry,
  divided by the fleet size, and the INFO used_memory delta of the load.

Needs redis-server on PATH and PostgreSQL at 127.0.0.1:5432 with trust auth.

Usage: .venv/bin/python bench/bench_page.py [--size 100000] [--rounds 5] [--pages 200]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import psycopg

import fleet
from app import create_app
from app.config import Settings
from app.store.keys import fold_name
from procs import RedisProc

PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
# What issue 12 asks per 50-row page and per provider.
TARGET_RATIO, TARGET_REDIS_US, TARGET_BYTES = 1.0, 250.0, 1536


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=100_000, help="providers in the fleet (default 100,000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds, each registry then PostgreSQL (default 5)")
    p.add_argument("--pages", type=int, default=200, help="pages per round and target (default 200)")
    p.add_argument("--gpu-model", default="NVIDIA A100")
    p.add_argument("--min-vram", type=int, default=80000)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--load-processes", type=int, default=2)
    p.add_argument("--pg-dsn", default=PG_DSN)
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    return p.parse_args(argv)


def memory(client: Any, n: int, baseline: int) -> dict[str, Any]:
    """Sum MEMORY USAGE (SAMPLES 0: exact) over every key; INFO used_memory delta."""
    total, keys, by_kind = 0, 0, {}
    batch: list[str] = []

    def flush() -> None:
        nonlocal total
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
        for key, size in zip(batch, pipe.execute()):
            kind = key.split(":", 2)[1]
            by_kind[kind] = by_kind.get(kind, 0) + (size or 0)
            total += size or 0
        batch.clear()

    for key in client.scan_iter(match="registry:*", count=10_000):
        batch.append(key)
        keys += 1
        if len(batch) >= 2000:
            flush()
    flush()
    used = int(client.info("memory")["used_memory"])
    return {
        "keys": keys,
        "bytes_per_provider_all_keys": round(total / n),
        "bytes_per_provider_by_kind": {k: round(v / n) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "used_memory_delta_per_provider": round((used - baseline) / n),
    }


SCRIPT_CALLS = ("evalsha", "evalsha_ro", "eval", "eval_ro", "fcall", "fcall_ro")


def redis_usage(client: Any) -> tuple[int, int, float]:
    """Return (µs in the page's commands, HMGET calls, µs of CPU) Redis has spent so far.

    A page is one script call and one HMGET per row. The script's time includes the commands
    it runs, which commandstats also counts under their own names; the selective page's
    script runs no HMGET (main checks the count), so script calls plus HMGETs count each
    page's work once. CPU: INFO cpu, user and system, which also counts reading and writing
    the sockets.
    """
    stats = {name.removeprefix("cmdstat_"): v for name, v in client.info("commandstats").items()}
    usec = sum(int(stats[name]["usec"]) for name in (*SCRIPT_CALLS, "hmget") if name in stats)
    hmgets = int(stats["hmget"]["calls"]) if "hmget" in stats else 0
    cpu = client.info("cpu")
    return usec, hmgets, (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6


def load_postgres(conn: Any, app: Any) -> None:
    """Copy every provider, as the API shows it, into an indexed PostgreSQL schema."""
    conn.execute("CREATE TABLE providers (id text PRIMARY KEY, status text NOT NULL, payload text NOT NULL)")
    conn.execute("CREATE TABLE provider_gpus (provider_id text NOT NULL, model text NOT NULL, vram_mb int NOT NULL)")
    client = app.test_client()
    cursor, rows, gpus = None, [], []
    while True:
        query = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        response = client.get(f"/providers?{urlencode(query)}")
        for provider in response.get_json():
            rows.append((provider["id"], provider["status"], orjson.dumps(provider).decode()))
            gpus += [(provider["id"], fold_name(g["model_name"]), g["vram_mb"]) for g in provider["gpus"]]
        link = response.headers.get("Link")
        if not link:
            break
        cursor = dict(p.split("=", 1) for p in link[link.index("?") + 1 : link.index(">")].split("&"))["cursor"]
    with conn.cursor() as cur:
        with cur.copy("COPY providers (id, status, payload) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        with cur.copy("COPY provider_gpus (provider_id, model, vram_mb) FROM STDIN") as copy:
            for row in gpus:
                copy.write_row(row)
    conn.execute("CREATE INDEX ON providers (status, id)")
    conn.execute("CREATE INDEX ON provider_gpus (model, vram_mb, provider_id)")
    conn.execute("CREATE INDEX ON provider_gpus (provider_id)")
    conn.execute("ANALYZE")


PG_QUERY = """
SELECT p.payload FROM providers p
WHERE p.status = 'idle' AND EXISTS (
  SELECT 1 FROM provider_gpus g WHERE g.provider_id = p.id AND g.model = ANY(%s) AND g.vram_mb >= %s)
ORDER BY p.id LIMIT %s
"""


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and optionally write the results."""
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-page-"))
    server = RedisProc(workdir, "page")
    server.start()
    dbname = f"bench_page_{int(time.time())}"
    admin = psycopg.connect(args.pg_dsn, autocommit=True)
    admin.execute(f"CREATE DATABASE {dbname}")
    try:
        client = server.client()
        baseline = int(client.info("memory")["used_memory"])
        ids, load_s = fleet.load(server.url, args.size, seed=args.seed, processes=args.load_processes)
        print(f"loaded {len(ids)} providers in {load_s:.1f} s", flush=True)
        mem = memory(client, args.size, baseline)
        print(json.dumps(mem), flush=True)
        app = create_app(Settings(redis_url=server.url, auth_enabled=False, rate_limit_enabled=False))
        http = app.test_client()
        path = "/providers?" + urlencode({"gpu_model": args.gpu_model, "min_vram": args.min_vram,
                                          "status": "idle", "limit": args.limit})
        pg = psycopg.connect(args.pg_dsn.replace("dbname=postgres", f"dbname={dbname}"), autocommit=True)
        load_postgres(pg, app)
        # The substring resolved against the known models first, as the registry's catalog does.
        like = sorted({fold_name(k.model_name) for k in fleet.CATALOGUE
                       if fold_name(args.gpu_model) in fold_name(k.model_name)})
        page = http.get(path)
        ours = [p["id"] for p in page.get_json()]
        page_stats = {"rows": len(ours), "bytes": len(page.get_data()),
                      "gpus_per_row": round(statistics.fmean(len(p["gpus"]) for p in page.get_json()), 2)}
        theirs = [json.loads(r[0])["id"] for r in pg.execute(PG_QUERY, (like, args.min_vram, args.limit))]
        if ours != theirs:
            print("warning: the two pages differ", file=sys.stderr)
        rounds = []
        for _ in range(args.rounds):
            usec0, hmget0, cpu0 = redis_usage(client)
            times = []
            for _ in range(args.pages):
                started = time.perf_counter()
                response = http.get(path)
                response.get_data()
                times.append(time.perf_counter() - started)
            usec1, hmget1, cpu1 = redis_usage(client)
            if hmget1 - hmget0 != args.pages * len(ours):
                print("warning: not one HMGET per row: the Redis time per page counts some twice", file=sys.stderr)
            pg_times = []
            for _ in range(args.pages):
                started = time.perf_counter()
                rows = pg.execute(PG_QUERY, (like, args.min_vram, args.limit)).fetchall()
                b"[" + ",".join(r[0] for r in rows).encode() + b"]"
                pg_times.append(time.perf_counter() - started)
            ours_ms, pg_ms = statistics.median(times) * 1000, statistics.median(pg_times) * 1000
            rounds.append({
                "registry_p50_ms": round(ours_ms, 3), "postgres_p50_ms": round(pg_ms, 3),
                "ratio": round(ours_ms / pg_ms, 2),
                "redis_us_per_page": round((usec1 - usec0) / args.pages, 1),
                "redis_cpu_us_per_page": round((cpu1 - cpu0) / args.pages, 1),
                "pages_per_s_one_client": round(1 / statistics.median(times)),
            })
            print(json.dumps(rounds[-1]), flush=True)
        result = {
            "size": args.size, "page": page_stats, "load_s": round(load_s, 1), "memory": mem,
            "rounds": rounds,
            "median": {k: statistics.median(r[k] for r in rounds) for k in rounds[0]},
        }
        median = result["median"]
        print(f"\nmedian of {args.rounds} rounds at {args.size} providers (page: {page_stats}):")
        print(f"  page p50: registry {median['registry_p50_ms']} ms, PostgreSQL {median['postgres_p50_ms']} ms,"
              f" ratio {median['ratio']} (target <= {TARGET_RATIO})")
        print(f"  Redis time per page: {median['redis_us_per_page']} µs in commands (target <= {TARGET_REDIS_US}),"
              f" {median['redis_cpu_us_per_page']} µs of CPU")
        print(f"  memory per provider: {mem['bytes_per_provider_all_keys']} B over every key,"
              f" {mem['used_memory_delta_per_provider']} B used_memory delta (target <= {TARGET_BYTES})")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        pg.close()
        return 0
    finally:
        server.stop()
        admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        admin.close()


if __name__ == "__main__":
    sys.exit(main())
