"""Under contention, a provider is granted at most once per claim lifetime."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
import requests

from .conftest import provider_body
from .gunicorn_server import GunicornServer

PROVIDERS = 6
PROCESSES = 3
THREADS = 6
ATTEMPTS = 8


def _claim_many(url: str, attempts: int) -> list[str]:
    """Claim one provider at a time; return the IDs granted."""
    granted: list[str] = []
    with requests.Session() as session:
        for _ in range(attempts):
            response = session.post(f"{url}/providers/claim", json={"count": 1, "claim_ttl_s": 600}, timeout=10)
            assert response.status_code in (200, 409), response.text
            if response.status_code == 200:
                granted += [p["id"] for p in response.json()["providers"]]
    return granted


def _claimer_process(url: str) -> list[str]:
    with ThreadPoolExecutor(THREADS) as pool:
        results = pool.map(_claim_many, [url] * THREADS, [ATTEMPTS] * THREADS)
    return [provider_id for granted in results for provider_id in granted]


@pytest.fixture
def server(redis_server, redis_db):
    server = GunicornServer(redis_server.url, workers=3)
    server.start()
    yield server
    server.stop()


def test_many_concurrent_claimers_never_get_the_same_provider(server):
    ids = []
    for i in range(PROVIDERS):
        response = requests.post(f"{server.url}/providers", json=provider_body(name=f"rig-{i}"), timeout=10)
        ids.append(response.json()["id"])

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
        granted = [pid for batch in pool.map(_claimer_process, [server.url] * PROCESSES) for pid in batch]
    with ThreadPoolExecutor(THREADS) as pool:  # and threads of this process, racing the rest
        granted += [pid for batch in pool.map(_claim_many, [server.url] * THREADS, [2] * THREADS) for pid in batch]

    assert sorted(granted) == sorted(ids)  # every provider granted, none twice
    listed = requests.get(f"{server.url}/providers?status=busy", timeout=10)
    assert listed.headers["X-Total-Count"] == str(PROVIDERS)
