"""Capacity at a glance: counters kept by the writes, checked against a recomputation."""
from __future__ import annotations

import random
import time
from collections import defaultdict

from app.jobs.sweeper import Sweeper
from app.registry import EXTENSION

from .conftest import Providers, gpu, new_id, provider_body

MODELS = [("NVIDIA A100", 81920, "ampere"), ("nvidia a100", 40960, "ampere"), ("RTX 4090", 24576, "ada"), ("H100", 81920, "hopper")]
LOCATIONS = ["eu-west", "EU-West", "us-east", None]


def recompute(client) -> dict:
    """The summary from every provider, the slow way."""
    providers = []
    url = "/providers?limit=1000"
    while url:
        response = client.get(url)
        providers += response.get_json()
        link = response.headers.get("Link")
        url = link[1 : link.index(">")] if link else ""
    by_status = {s: 0 for s in ("idle", "busy", "maintenance", "error", "offline")}
    models: dict = defaultdict(lambda: {"providers": 0, "gpus": 0, "idle_gpus": 0, "vram_mb": 0, "idle_vram_mb": 0})
    locations: dict = defaultdict(lambda: {"providers": 0, "idle_providers": 0, "gpus": 0, "idle_gpus": 0})
    for p in providers:
        idle = p["status"] == "idle"
        by_status[p["status"]] += 1
        per_model: dict = defaultdict(list)
        for g in p["gpus"]:
            per_model[" ".join(g["model_name"].split()).casefold()].append(g["vram_mb"])
        for model, vrams in per_model.items():
            m = models[model]
            m["providers"] += 1
            m["gpus"] += len(vrams)
            m["vram_mb"] += sum(vrams)
            m["idle_gpus"] += len(vrams) if idle else 0
            m["idle_vram_mb"] += sum(vrams) if idle else 0
        if p["location"]:
            loc = locations[" ".join(p["location"].split()).casefold()]
            loc["providers"] += 1
            loc["idle_providers"] += 1 if idle else 0
            loc["gpus"] += len(p["gpus"])
            loc["idle_gpus"] += len(p["gpus"]) if idle else 0
    in_grace = sum(p["liveness"] == "grace" for p in providers)
    return {"by_status": by_status, "in_grace": in_grace, "by_gpu_model": dict(sorted(models.items())), "by_location": dict(sorted(locations.items()))}


def random_body(rng: random.Random) -> dict:
    gpus = [gpu(model, vram, architecture=arch) for model, vram, arch in rng.choices(MODELS, k=rng.randint(1, 4))]
    return provider_body(name=f"rig-{rng.randint(0, 999)}", location=rng.choice(LOCATIONS), gpus=gpus)


def test_summary_shape_for_one_provider(client, providers):
    providers.register(gpus=[gpu("NVIDIA A100", 81920), gpu("NVIDIA A100", 81920)], location="eu-west")
    assert client.get("/providers/summary").get_json() == {
        "by_status": {"idle": 1, "busy": 0, "maintenance": 0, "error": 0, "offline": 0},
        "in_grace": 0,
        "by_gpu_model": {"nvidia a100": {"providers": 1, "gpus": 2, "idle_gpus": 2, "vram_mb": 163840, "idle_vram_mb": 163840}},
        "by_location": {"eu-west": {"providers": 1, "idle_providers": 1, "gpus": 2, "idle_gpus": 2}},
    }


def test_summary_equals_a_recomputation_after_random_operations(make_app):
    app = make_app(heartbeat_ttl_s=1, heartbeat_interval_s=0.5)
    client = app.test_client()
    providers = Providers(client)
    rng = random.Random(20261126)
    ids: list[str] = []
    claims: dict[str, str] = {}
    for step in range(160):
        action = rng.choice(["register", "register", "reregister", "heartbeat", "status", "update", "delete", "claim", "release"])
        if action == "register" or not ids:
            ids.append(providers.register(**random_body(rng))["id"])
        elif action == "reregister":
            providers.register(id=rng.choice(ids), **random_body(rng))
        elif action == "heartbeat":
            providers.heartbeat(rng.choice(ids), gpu_metrics=[{"is_healthy": rng.random() > 0.3}])
        elif action == "status":
            providers.heartbeat(rng.choice(ids), status=rng.choice(["idle", "busy", "maintenance", "error", "offline"]))
        elif action == "update":
            assert client.put(f"/providers/{rng.choice(ids)}", json=random_body(rng)).status_code == 200
        elif action == "delete":
            victim = ids.pop(rng.randrange(len(ids)))
            assert client.delete(f"/providers/{victim}").status_code == 204
        elif action == "claim":
            response = client.post("/providers/claim", json={"count": rng.randint(1, 2), "claim_ttl_s": 1})
            if response.status_code == 200:
                for p in response.get_json()["providers"]:
                    claims[p["id"]] = response.get_json()["claim_id"]
        elif action == "release" and claims:
            provider_id, claim_id = claims.popitem()
            client.post(f"/providers/{provider_id}/release", json={"claim_id": claim_id})
        if step % 40 == 39:
            assert client.get("/providers/summary").get_json() == recompute(client)
            time.sleep(1.05)  # leases and claims lapse: corrected at read time, unswept
            assert client.get("/providers/summary").get_json() == recompute(client)
            if step % 80 == 79:
                Sweeper(app.extensions[EXTENSION].store, interval_s=0.1).sweep_once()
                assert client.get("/providers/summary").get_json() == recompute(client)


def test_summary_forgets_deleted_providers(client, providers, redis_db):
    provider_id = providers.register()["id"]
    client.delete(f"/providers/{provider_id}")
    assert redis_db.hgetall("registry:counts") == {}
    assert client.get("/providers/summary").get_json()["by_gpu_model"] == {}
    assert client.get(f"/providers/{new_id()}").status_code == 404
