"""Long polls of the feed under gunicorn never starve the heartbeat path."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests

from .conftest import provider_body
from .gunicorn_server import GunicornServer

WAITING = 50


def test_heartbeats_are_served_while_50_long_polls_wait(redis_server, redis_db):
    server = GunicornServer(redis_server.url, workers=2)
    server.start()
    try:
        provider_id = requests.post(f"{server.url}/providers", json=provider_body(), timeout=10).json()["id"]
        position = requests.get(f"{server.url}/providers/events", timeout=10).json()["next"]
        with ThreadPoolExecutor(WAITING) as pool:
            polls = [
                pool.submit(requests.get, f"{server.url}/providers/events?after={position}&wait=20", timeout=30)
                for _ in range(WAITING)
            ]
            with requests.Session() as session:
                answers = [
                    session.post(f"{server.url}/providers/{provider_id}/heartbeat", timeout=10).status_code
                    for _ in range(30)
                ]
            assert answers == [200] * 30
            assert not any(poll.done() for poll in polls)  # all 50 still waiting meanwhile
            # A change ends every wait.
            requests.put(f"{server.url}/providers/{provider_id}/status", json={"status": "busy"}, timeout=10)
            results = [poll.result() for poll in polls]
        assert all(r.status_code == 200 and r.json()["events"][0]["type"] == "status_changed" for r in results)
    finally:
        server.stop()
