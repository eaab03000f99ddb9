"""Leadership: the sweeper and snapshots run in one elected process, however the service started."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis
import requests

from app.jobs.leader import LeaderLease

from .conftest import provider_body, wait_until
from .redis_server import free_port

REPO = Path(__file__).resolve().parent.parent
LEADER_KEY = "registry:lock:leader"


class PlainGunicorn:
    """`gunicorn wsgi:app` as the README's quick readers start it: without the package's settings."""

    def __init__(self, redis_url: str, workers: int = 2, **settings: object) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="registry-test-plain-"))
        self.log_path = self.dir / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env.update(
            REGISTRY_CONFIG=str(self.dir / "config.yaml"),
            REGISTRY_REDIS_URL=redis_url,
            REGISTRY_CONSUL_ENABLED="false",
            REGISTRY_AUTH_ENABLED="false",
            REGISTRY_RATE_LIMIT_ENABLED="false",
            REGISTRY_HEARTBEAT_TTL_S="1",
            REGISTRY_HEARTBEAT_INTERVAL_S="0.5",
            REGISTRY_SWEEP_INTERVAL_S="0.2",
        )
        env.update({f"REGISTRY_{k.upper()}": str(v) for k, v in settings.items()})
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{self.port}", "-w", str(workers),
                 "-k", "gevent", "wsgi:app"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        if not wait_until(self.healthy, timeout=30, interval=0.1):
            self.stop()
            pytest.fail(f"gunicorn did not serve:\n{self.log()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"gunicorn exited:\n{self.log()}")
        try:
            return requests.get(f"{self.url}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def workers(self) -> set[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return {int(pid) for pid in out.stdout.split()}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def plain(redis_server, redis_db) -> Iterator[list[PlainGunicorn]]:
    started: list[PlainGunicorn] = []
    yield started
    for server in started:
        server.stop()


def leader_pid(client: redis.Redis) -> int | None:
    holder = client.get(LEADER_KEY)
    return int(holder.split(":")[1]) if holder else None


def offline_event_within(server: PlainGunicorn, provider_id: str, after: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = requests.get(f"{server.url}/providers/events", params={"after": after, "wait": 1}, timeout=10).json()
        if any(e["type"] == "offline" and e["provider_id"] == provider_id for e in page["events"]):
            return True
        after = page["next"]
    return False


def test_two_leases_on_one_redis_elect_one_leader_and_the_other_takes_over_when_it_lapses(redis_db):
    first = LeaderLease(redis_db, LEADER_KEY, lease_s=0.6, step_s=0.1)
    second = LeaderLease(redis_db, LEADER_KEY, lease_s=0.6, step_s=0.1)

    assert first.step() and not second.step()
    assert first.is_leader() and not second.is_leader()
    assert redis_db.get(LEADER_KEY) == first.identity

    # The first stops renewing, as a killed or frozen process does; it stops believing it
    # leads a step before its lease lapses in Redis, so the two never both lead.
    assert wait_until(lambda: not first.is_leader(), timeout=1)
    assert redis_db.get(LEADER_KEY) == first.identity
    assert wait_until(second.step, timeout=1.5, interval=0.1)
    assert not first.step() and not first.is_leader()


def test_a_leader_that_stops_gives_the_lease_up_at_once(redis_db):
    first = LeaderLease(redis_db, LEADER_KEY)
    second = LeaderLease(redis_db, LEADER_KEY)
    assert first.step()
    first.release()
    assert second.step()


def test_plain_gunicorn_without_the_package_settings_sweeps_a_lapsed_lease_into_an_offline_event(
    plain, redis_server
):
    server = PlainGunicorn(redis_server.url)
    plain.append(server)
    after = requests.get(f"{server.url}/providers/events", timeout=5).json()["next"]
    created = requests.post(f"{server.url}/providers", json=provider_body(), timeout=5)
    assert created.status_code == 201

    assert offline_event_within(server, created.json()["id"], after, timeout=10), server.log()


def test_two_instances_sweep_through_one_leader_and_a_follower_takes_over_when_it_is_killed(
    plain, redis_server, redis_db
):
    first = PlainGunicorn(redis_server.url, workers=1)
    plain.append(first)
    second = PlainGunicorn(redis_server.url, workers=1)
    plain.append(second)
    assert wait_until(lambda: leader_pid(redis_db) is not None, timeout=5)

    # One leader among the two instances' processes, the same one all along.
    holders = set()
    for _ in range(20):
        holders.add(redis_db.get(LEADER_KEY))
        time.sleep(0.1)
    assert len(holders) == 1
    leader = leader_pid(redis_db)
    assert leader in first.workers() | second.workers()
    survivor = second if leader in first.workers() else first
    became = [log.count("became the leader") for log in (first.log(), second.log())]
    assert sum(became) == 1

    killed_at = time.monotonic()
    os.kill(leader, signal.SIGKILL)
    assert wait_until(lambda: leader_pid(redis_db) not in (None, leader), timeout=10)
    took_over_s = time.monotonic() - killed_at
    print(f"fail-over: a new leader {took_over_s:.1f} s after SIGKILL")
    assert took_over_s < 7  # lease 5 s, a follower's try every second

    # The new leader sweeps: a lease that lapses now gets its offline event.
    after = requests.get(f"{survivor.url}/providers/events", timeout=5).json()["next"]
    created = requests.post(f"{survivor.url}/providers", json=provider_body(), timeout=5)
    assert offline_event_within(survivor, created.json()["id"], after, timeout=5)
