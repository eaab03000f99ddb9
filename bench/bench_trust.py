"""What trust costs on the hot path: a heartbeat with auth and rate limits on, and off.

In-process (Flask test client, no HTTP server), against a private redis-server on loopback,
so that the difference is the registry's own work: hashing the token, the token check inside
heartbeat.lua, and flask-limiter's Redis round trips. Prints medians and ratios.

    .venv/bin/python -m bench.bench_trust [heartbeats per round] [rounds]
"""
from __future__ import annotations

import statistics
import sys
import time

from app import create_app
from app.config import Settings
from app.keyring import hash_secret
from app.registry import EXTENSION
from tests.conftest import provider_body
from tests.redis_server import RedisServer

ADMIN = "bench-admin-key"
KEYS = [{"name": "bench-admin", "sha256": hash_secret(ADMIN), "roles": ["admin"]}]
CASES = {
    "auth off, limits off": {"auth_enabled": False, "rate_limit_enabled": False},
    "provider token, limits off": {"rate_limit_enabled": False},
    "provider token, limits on": {},
}


def prepare(server: RedisServer, overrides: dict) -> tuple:
    """Build an app with `overrides`, register one provider; return the app, client and URL."""
    settings = Settings(
        redis_url=server.url, api_keys=KEYS, rate_limit_per_client="1000000/second",
        rate_limit_heartbeat="1000000/second", **overrides,
    )
    app = create_app(settings)
    admin = app.test_client()
    admin.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN}"
    body = admin.post("/providers", json=provider_body()).get_json()
    daemon = app.test_client()
    if settings.auth_enabled:
        daemon.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {body['provider_token']}"
    url = f"/providers/{body['id']}/heartbeat"
    for _ in range(200):  # warm up: scripts loaded, connections open
        daemon.post(url)
    return app, daemon, url


def mean_us(daemon, url: str, count: int) -> float:
    """Return the mean time of `count` heartbeats, in microseconds."""
    started = time.perf_counter()
    for _ in range(count):
        assert daemon.post(url).status_code == 200
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    server = RedisServer()
    server.start()
    try:
        prepared = {name: prepare(server, overrides) for name, overrides in CASES.items()}
        samples: dict[str, list[float]] = {name: [] for name in CASES}
        for _ in range(rounds):  # cases interleaved, so that machine noise hits them alike
            for name, (_, daemon, url) in prepared.items():
                samples[name].append(mean_us(daemon, url, count))
        base = statistics.median(samples["auth off, limits off"])
        for name, values in samples.items():
            us = statistics.median(values)
            print(f"{name:28s} {us:7.0f} µs/heartbeat (median of {rounds} rounds of {count})  x{us / base:.2f}")
        for app, _, _ in prepared.values():
            app.extensions[EXTENSION].close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
