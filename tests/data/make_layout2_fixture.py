"""Write layout2_redis.json: a Redis filled by the registry of layout 2, and what it answered.

Run from a checkout of layout 2 (commit b1ceea4, the last one before layout 3), with this
file copied in:
    .venv/bin/python tests/data/make_layout2_fixture.py tests/data/layout2_redis.json
It registers a few providers of different kinds through the API (a daemon's complete and
partial live metrics, an unhealthy GPU, mixed models, names that need escaping, a claim, a
daemon that went offline), records each provider's answer, some queries' IDs and the
providers' tokens, then every key of Redis without a TTL. tests/test_layout_migration.py
loads it into a fresh Redis, migrates it and checks that the answers are the same.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [".", "bench"]

from app import create_app  # noqa: E402
from app.config import Settings  # noqa: E402
from app.registry import EXTENSION  # noqa: E402
from app.store.migrations import migrate  # noqa: E402
from procs import RedisProc  # noqa: E402
from tests.conftest import ADMIN_KEY, REGISTER_KEY, TEST_API_KEYS, bearer_client, gpu, provider_body  # noqa: E402

QUERIES = ("gpu_model=a100", "gpu_model=h100&min_gpus=4", "min_vram=40000", "location=s%C3%A3o+paulo",
           "architecture=hopper", "healthy_only=true&gpu_model=l4")


def live(load: int, healthy: bool = True) -> dict[str, object]:
    return {"utilization_gpu_percent": load, "utilization_memory_percent": load // 2,
            "temperature_c": 40 + load // 10, "power_draw_w": 100 + load, "is_healthy": healthy}


def main(out: Path) -> None:
    redis_proc = RedisProc(Path(tempfile.mkdtemp()), "layout2")
    redis_proc.start()
    try:
        app = create_app(Settings(redis_url=redis_proc.url, heartbeat_ttl_s=30, api_keys=TEST_API_KEYS))
        admin, register = bearer_client(app, ADMIN_KEY), bearer_client(app, REGISTER_KEY)
        bodies = [
            provider_body(name="plain", gpus=[gpu()]),
            provider_body(name="eight", gpus=[gpu("NVIDIA H100", 81559, architecture="Hopper", cuda_cores=16896,
                                                  **live(i * 10)) for i in range(8)],
                          metadata={"rack": "r1", "labels": {"tier": "gold"}, "ports": [22, 8080]}),
            provider_body(name="mixed", gpus=[gpu("NVIDIA A100", 40960, architecture="Ampere"),
                                              gpu("NVIDIA L4", 24576, architecture="Ada")]),
            provider_body(name="sick", gpus=[gpu("NVIDIA L4", 24576, architecture="Ada"),
                                             gpu("NVIDIA L4", 24576, architecture="Ada")]),
            provider_body(name='quoted "},{" name', location="São Paulo",
                          gpus=[gpu("RTX 4090", 24564, driver_version='550"},{\\x', architecture="Ada")]),
            provider_body(name="claimed", gpus=[gpu("NVIDIA A100", 81920, architecture="Ampere")]),
            provider_body(name="gone", gpus=[gpu("NVIDIA H100", 81559, architecture="Hopper")]),
        ]
        providers = []
        for body in bodies:
            answer = register.post("/providers", json=body)
            assert answer.status_code == 201, answer.get_json()
            providers.append(answer.get_json())
        ids = {p["name"]: p["id"] for p in providers}
        tokens = {p["id"]: p["provider_token"] for p in providers}

        def beat(name: str, body: dict[str, object]) -> None:
            client = bearer_client(app, tokens[ids[name]])
            answer = client.post(f"/providers/{ids[name]}/heartbeat", json=body)
            assert answer.status_code == 200, answer.get_json()

        beat("eight", {"gpu_metrics": [live(50 + i) for i in range(8)]})  # kept apart: gpu_live
        beat("mixed", {"gpu_metrics": [{"temperature_c": 71}]})  # partial: folded into gpus
        beat("sick", {"gpu_metrics": [live(5), live(6, healthy=False)]})  # health: folded
        beat("gone", {"status": "offline"})
        claim = admin.post("/providers/claim", json={"gpu_model": "a100", "min_vram": 80000})
        assert claim.status_code in (200, 201), claim.get_json()

        migrate(app.extensions[EXTENSION].store)  # what the leader's jobs do first: the layout key
        answers = {pid: admin.get(f"/providers/{pid}").get_json() for pid in ids.values()}
        queries = {q: sorted(p["id"] for p in admin.get(f"/providers?{q}").get_json()) for q in QUERIES}
        client = redis_proc.client()
        keys = {}
        for key in sorted(client.keys("*")):
            if client.pttl(key) >= 0:
                continue  # leases, locks, limits: gone by the time the fixture is used
            kind = client.type(key)
            if kind == "hash":
                keys[key] = {"hash": client.hgetall(key)}
            elif kind == "zset":
                keys[key] = {"zset": client.zrange(key, 0, -1, withscores=True)}
            elif kind == "set":
                keys[key] = {"set": sorted(client.smembers(key))}
            elif kind == "string":
                keys[key] = {"string": client.get(key)}
            elif kind == "stream":
                keys[key] = {"stream": [fields for _, fields in client.xrange(key)]}
        fixture = {"layout": client.get("registry:layout"), "answers": answers, "queries": queries,
                   "tokens": tokens, "keys": keys}
        out.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    finally:
        redis_proc.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
