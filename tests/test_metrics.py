"""Prometheus metrics at /metrics: scraped and parsed as Prometheus would, in-process and under gunicorn."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from app.jobs.sweeper import Sweeper
from app.keyring import hash_secret
from app.registry import EXTENSION

from .conftest import READ_KEY, REGISTER_KEY, TEST_API_KEYS, Providers, bearer_client, gpu, provider_body, wait_until
from .gunicorn_server import GunicornServer

METRICS_KEY = "test-metrics-key-0123456789abcdefghijklmnopqr"
WITH_METRICS_KEY = [*TEST_API_KEYS, {"name": "test-metrics", "sha256": hash_secret(METRICS_KEY), "roles": ["metrics"]}]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client: FlaskClient) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return samples(response.get_data(as_text=True))


def test_requests_are_counted_by_route_rule_and_status_with_latency(client: FlaskClient, providers: Providers) -> None:
    route = "/providers/<uuid:provider_id>"
    before = scrape(client)
    provider = providers.register()
    providers.get(provider["id"])
    client.get(f"/providers/{provider['id']}x")  # a malformed ID: no rule matched
    after = scrape(client)
    assert value(after, "registry_http_requests_total", route=route, method="GET", status="200") - value(
        before, "registry_http_requests_total", route=route, method="GET", status="200") == 1
    assert value(after, "registry_http_request_duration_seconds_count", route=route, method="GET") > value(
        before, "registry_http_request_duration_seconds_count", route=route, method="GET")
    assert value(after, "registry_http_requests_total", route="unmatched", method="GET", status="404") > value(
        before, "registry_http_requests_total", route="unmatched", method="GET", status="404")
    # The raw path never becomes a label: one series per route, whatever the IDs.
    assert not any(provider["id"] in str(labels) for _, labels in after)


def test_heartbeats_are_counted_accepted_and_refused_by_error_code(client: FlaskClient, providers: Providers) -> None:
    provider = providers.register()
    before = scrape(client)
    providers.heartbeat(provider["id"])
    client.post(f"/providers/{provider['id']}/heartbeat", json={})
    assert client.put(f"/providers/{provider['id']}/status", json={"status": "sleepy"}).status_code == 400
    assert client.put(f"/providers/{provider['id']}/status", json={}, headers={"If-Match": '"999"'}).status_code == 412
    after = scrape(client)
    assert value(after, "registry_heartbeats_accepted_total") - value(before, "registry_heartbeats_accepted_total") == 2
    for reason in ("validation_error", "version_mismatch"):
        assert value(after, "registry_heartbeats_refused_total", reason=reason) - value(
            before, "registry_heartbeats_refused_total", reason=reason) == 1


def test_fleet_gauges_come_from_the_summary_counters(client: FlaskClient, providers: Providers) -> None:
    providers.register(gpus=[gpu("NVIDIA A100", 81920), gpu("NVIDIA A100", 81920)])
    busy = providers.register(name="rig-2", gpus=[gpu("NVIDIA H100", 81920)])
    providers.heartbeat(busy["id"], status="busy")
    scraped = scrape(client)
    assert value(scraped, "registry_store_up") == 1
    assert value(scraped, "registry_providers", status="idle") == 1
    assert value(scraped, "registry_providers", status="busy") == 1
    assert value(scraped, "registry_providers", status="offline") == 0
    assert value(scraped, "registry_gpus", gpu_model="nvidia a100") == 2
    assert value(scraped, "registry_idle_gpus", gpu_model="nvidia h100") == 0
    assert value(scraped, "registry_vram_megabytes", gpu_model="nvidia h100") == 81920
    assert value(scraped, "registry_providers_in_grace") == 0


def test_lapsed_leases_count_and_the_sweepers_lag_shows_until_it_sweeps(make_app: Callable[..., Flask]) -> None:
    app = make_app(heartbeat_ttl_s=0.2, heartbeat_interval_s=0.1)
    client = app.test_client()
    Providers(client).register()
    time.sleep(0.5)
    waiting = scrape(client)
    assert waiting[("registry_sweeper_lag_seconds", ())] >= 0.2
    assert value(waiting, "registry_providers", status="offline") == 1  # effective status, unswept
    Sweeper(app.extensions[EXTENSION].store, interval_s=1).sweep_once()
    swept = scrape(client)
    assert swept[("registry_sweeper_lag_seconds", ())] == 0
    assert value(swept, "registry_leases_lapsed_total") - value(waiting, "registry_leases_lapsed_total") == 1


def test_claims_are_counted_granted_expired_and_released(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    for name in ("a", "b", "c"):
        Providers(client).register(name=name)
    before = scrape(client)
    kept = client.post("/providers/claim", json={"count": 2, "claim_ttl_s": 30}).get_json()
    lapsing = client.post("/providers/claim", json={"count": 1, "claim_ttl_s": 1}).get_json()
    released = client.post(f"/providers/{kept['providers'][0]['id']}/release", json={"claim_id": kept["claim_id"]})
    assert released.status_code == 200 and lapsing["providers"]
    sweeper = Sweeper(app.extensions[EXTENSION].store, interval_s=1)
    assert wait_until(lambda: any(t.status == "idle" for t in sweeper.sweep_once()), timeout=5)
    after = scrape(client)
    for name, delta in [("registry_claims_granted_total", 3), ("registry_claims_released_total", 1),
                        ("registry_claims_expired_total", 1)]:
        assert value(after, name) - value(before, name) == delta, name


def test_redis_failures_are_counted_and_the_scrape_still_answers(make_app: Callable[..., Flask]) -> None:
    from .redis_server import free_port

    app = make_app(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.2)
    client = app.test_client()
    before = scrape(client)
    assert client.get("/providers/summary").get_json()["code"] == "store_unavailable"
    after = scrape(client)
    assert value(after, "registry_store_up") == 0
    assert value(after, "registry_store_errors_total", code="store_unavailable") > value(
        before, "registry_store_errors_total", code="store_unavailable")


def test_metrics_need_a_read_key_by_default(app: Flask) -> None:
    assert bearer_client(app, None).get("/metrics").status_code == 401
    assert bearer_client(app, REGISTER_KEY).get("/metrics").status_code == 403
    assert bearer_client(app, READ_KEY).get("/metrics").status_code == 200


def test_a_metrics_key_reads_metrics_and_nothing_else(make_app: Callable[..., Flask]) -> None:
    app = make_app(api_keys=WITH_METRICS_KEY, metrics_auth="metrics")
    assert bearer_client(app, METRICS_KEY).get("/metrics").status_code == 200
    assert bearer_client(app, METRICS_KEY).get("/providers").status_code == 403
    refused = bearer_client(app, READ_KEY).get("/metrics")
    assert refused.status_code == 403 and refused.get_json()["details"]["required_roles"] == ["metrics", "admin"]


def test_metrics_auth_none_serves_anyone(make_app: Callable[..., Flask]) -> None:
    app = make_app(metrics_auth="none")
    assert bearer_client(app, None).get("/metrics").status_code == 200


# -- under gunicorn: every worker's counts add up -----------------------------------------------


@pytest.fixture
def two_workers(redis_db: Any, redis_server: Any):
    server = GunicornServer(redis_server.url, workers=2, worker_class="sync")
    server.start()
    # /health answers once one worker is up; both must be, to share the requests.
    assert wait_until(lambda: server.log().count("background jobs started") == 2, timeout=20), server.log()
    yield server
    server.stop()


def test_counts_of_both_gunicorn_workers_add_up_in_every_scrape(two_workers: GunicornServer) -> None:
    url = two_workers.url
    created = requests.post(f"{url}/providers", json=provider_body(), timeout=5).json()
    heartbeats = 80

    def beat(_: int) -> int:
        return requests.post(f"{url}/providers/{created['id']}/heartbeat", timeout=5).status_code

    # Eight at once: while one sync worker is busy, the other accepts.
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(beat, range(heartbeats))) == {200}
    route = "/providers/<uuid:provider_id>/heartbeat"
    seen = []
    for _ in range(6):  # whichever worker answers the scrape sees every worker's counts
        scraped = samples(requests.get(f"{url}/metrics", timeout=5).text)
        seen.append(value(scraped, "registry_http_requests_total", route=route, method="POST", status="200"))
        assert value(scraped, "registry_heartbeats_accepted_total") == heartbeats
        assert value(scraped, "registry_providers", status="idle") == 1
    assert seen == [heartbeats] * 6
    # Both workers answered some of them, each counting in its own file.
    per_worker = heartbeats_by_worker(two_workers)
    assert len(per_worker) == 2 and all(per_worker.values()), per_worker
    assert sum(per_worker.values()) == heartbeats


def test_the_metrics_directory_goes_with_the_master(redis_db: Any, redis_server: Any) -> None:
    server = GunicornServer(redis_server.url, workers=2, worker_class="sync")
    server.start()
    try:
        directory = metrics_dir(server)
        assert directory.name.startswith("registry-metrics-") and directory.is_dir()
    finally:
        assert server.stop() == 0
    assert not directory.exists()


def workers_of(server: GunicornServer) -> list[int]:
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    # The master's children are its workers (and, with Consul on, a jobs process: off here).
    return [int(c) for c in children]


def metrics_dir(server: GunicornServer) -> Path:
    """The directory the workers write their samples to, found from their open files."""
    for pid in workers_of(server):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = Path(os.readlink(fd))
            if target.suffix == ".db":
                return target.parent
    raise AssertionError("no worker has a metrics file open")


def heartbeats_by_worker(server: GunicornServer) -> dict[int, float]:
    directory = metrics_dir(server)
    counts = {}
    for pid in workers_of(server):
        path = directory / f"counter_{pid}.db"
        total = 0.0
        if path.exists():
            for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
                if "registry_heartbeats_accepted" in key:
                    total += value
        counts[pid] = total
    return counts


def test_the_grafana_dashboard_uses_only_names_the_registry_exports(make_app: Callable[..., Flask]) -> None:
    import json
    import re

    dashboard = json.loads((Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bregistry_[a-z_]+", target["expr"])
    }
    app = make_app()
    from app.metrics import snapshot_taken

    snapshot_taken(1.0)  # the snapshot series exist once one was taken
    Providers(app.test_client()).register()  # and the GPU ones once a GPU is registered
    exported = set(scrape(app.test_client()))
    names = {name for name, _ in exported}
    assert used - names == set()
