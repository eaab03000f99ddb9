"""The scheduler's plain `GET /providers`: time and worker memory of listing every provider.

For each fleet size, a private redis-server is filled with providers of 8 GPUs (bench_snapshot's
`details`), the registry serves under gunicorn with one sync worker, and the whole fleet is read
with one `GET /providers` several times. The worker's peak resident memory (VmHWM) is read
before and after: the listing streams 500 providers at a time, so the growth should not depend
on the fleet's size.

    python bench/bench_list.py --sizes 10000,100000 --rounds 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings  # noqa: E402
from app.registry import Registry  # noqa: E402
from bench.bench_snapshot import fill  # noqa: E402
from bench.procs import Gunicorn, RedisProc  # noqa: E402


def kib(pid: int, field: str) -> int:
    """Return a /proc/<pid>/status memory field (VmRSS, VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def worker_pid(master_pid: int) -> int:
    """Return the one worker of a gunicorn master (its only child that is not the jobs process)."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    workers = [int(c) for c in children if b"gunicorn" in Path(f"/proc/{c}/cmdline").read_bytes()]
    if len(workers) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {workers}")
    return workers[0]


def list_all(base_url: str) -> tuple[float, int, int]:
    """GET /providers; return seconds, bytes and X-Total-Count."""
    started = time.perf_counter()
    with urllib.request.urlopen(base_url + "/providers", timeout=600) as response:
        size = 0
        while chunk := response.read(1 << 20):
            size += len(chunk)
        total = int(response.headers["X-Total-Count"])
    return time.perf_counter() - started, size, total


def measure(size: int, rounds: int, workdir: Path) -> dict[str, float]:
    redis_proc = RedisProc(workdir, f"list-{size}")
    redis_proc.start()
    server = None
    try:
        registry = Registry.from_settings(Settings(redis_url=redis_proc.url, redis_timeout_s=30))
        fill(registry, size)
        registry.close()
        server = Gunicorn(
            f"list-{size}", "python:app.gunicorn_conf", "app.wsgi:app",
            {"REGISTRY_REDIS_URL": redis_proc.url, "REGISTRY_WORKERS": "1", "REGISTRY_WORKER_CLASS": "sync",
             "REGISTRY_AUTH_ENABLED": "false", "REGISTRY_RATE_LIMIT_ENABLED": "false",
             "REGISTRY_CONSUL_ENABLED": "false", "REGISTRY_REDIS_TIMEOUT_S": "30"},
            workdir,
        )
        server.start("/health")
        assert server.process is not None
        worker = worker_pid(server.process.pid)
        urllib.request.urlopen(server.base_url + "/providers?limit=1", timeout=30).read()  # warm
        before = kib(worker, "VmHWM")
        runs = [list_all(server.base_url) for _ in range(rounds)]
        after = kib(worker, "VmHWM")
        if any(total != size for _, _, total in runs):
            raise RuntimeError(f"the listing counted {[t for _, _, t in runs]}, not {size}")
        return {
            "providers": size,
            "seconds_median": statistics.median(s for s, _, _ in runs),
            "mb": runs[0][1] / 1e6,
            "worker_peak_before_mib": before / 1024,
            "worker_peak_after_mib": after / 1024,
            "worker_growth_mib": (after - before) / 1024,
        }
    finally:
        if server is not None:
            server.stop()
        redis_proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-list-") as tmp:
        rows = [measure(int(size), args.rounds, Path(tmp)) for size in args.sizes.split(",")]
    print("| providers | answer | time (median) | worker peak RSS before | after | growth |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['providers']:,} | {r['mb']:.0f} MB | {r['seconds_median']:.2f} s "
              f"| {r['worker_peak_before_mib']:.1f} MiB | {r['worker_peak_after_mib']:.1f} MiB "
              f"| {r['worker_growth_mib']:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
