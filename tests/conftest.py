"""Fixtures: a private Redis, an app built by the factory, and provider helpers."""
from __future__ import annotations

import copy
import dataclasses
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.config import Settings
from app.keyring import hash_secret
from app.registry import EXTENSION, Registry

from .consul_agent import ConsulAgent
from .redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the private server, emptied before each test (restarted if a test killed it)."""
    if redis_server.process is None:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


# Service keys of the test configuration, one per role; `client` sends the admin key.
ADMIN_KEY = "test-admin-key-0123456789abcdefghijklmnopqrstuv"
READ_KEY = "test-read-key-0123456789abcdefghijklmnopqrstuvw"
SCHEDULE_KEY = "test-schedule-key-0123456789abcdefghijklmnopqr"
REGISTER_KEY = "test-register-key-0123456789abcdefghijklmnopqr"
TEST_API_KEYS = [
    {"name": "test-admin", "sha256": hash_secret(ADMIN_KEY), "roles": ["admin"]},
    {"name": "test-read", "sha256": hash_secret(READ_KEY), "roles": ["read"]},
    {"name": "test-schedule", "sha256": hash_secret(SCHEDULE_KEY), "roles": ["read", "schedule"]},
    {"name": "test-register", "sha256": hash_secret(REGISTER_KEY), "roles": ["register"]},
]
# Rate limiting stays in the loop of every test, with limits no functional test reaches.
GENEROUS_LIMIT = "1000000/second"


@pytest.fixture
def agent() -> Iterator[ConsulAgent]:
    """A Consul agent double on a free port (see consul_agent.py), stopped after the test."""
    agent = ConsulAgent()
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        heartbeat_ttl_s=30,
        heartbeat_interval_s=10,
        api_keys=TEST_API_KEYS,
        rate_limit_per_client=GENEROUS_LIMIT,
        rate_limit_heartbeat=GENEROUS_LIMIT,
        rate_limit_unauthenticated=GENEROUS_LIMIT,
    )


class AdminClient(FlaskClient):
    """The test client of test apps: sends the admin key unless told otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # environ_base is the default; a request's own headers still override it.
        self.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_KEY}"


def app_builder(settings: Settings) -> Iterator[Callable[..., Flask]]:
    """Yield a function that builds test apps from `settings` changed by keyword arguments;
    close their Redis clients afterwards (for `yield from` in a fixture)."""
    built: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        app = create_app(dataclasses.replace(settings, **overrides))
        app.config["TESTING"] = True
        app.test_client_class = AdminClient
        built.append(app)
        return app

    yield make
    for app in built:
        app.extensions[EXTENSION].close()


@pytest.fixture
def make_app(settings: Settings, redis_db: redis.Redis) -> Iterator[Callable[..., Flask]]:
    """Build apps on the private Redis with settings changed by keyword arguments."""
    yield from app_builder(settings)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def registry(app: Flask) -> Registry:
    return app.extensions[EXTENSION]


def bearer_client(app: Flask, secret: str | None) -> FlaskClient:
    """A test client that sends `Authorization: Bearer <secret>` (nothing when None)."""
    test_client = app.test_client()
    test_client.environ_base.pop("HTTP_AUTHORIZATION", None)
    if secret is not None:
        test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return test_client


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A client holding the admin key, so tests of other features need not think of auth."""
    return bearer_client(app, ADMIN_KEY)


@pytest.fixture
def anonymous_client(app: Flask) -> FlaskClient:
    return bearer_client(app, None)


@pytest.fixture
def read_client(app: Flask) -> FlaskClient:
    return bearer_client(app, READ_KEY)


@pytest.fixture
def schedule_client(app: Flask) -> FlaskClient:
    return bearer_client(app, SCHEDULE_KEY)


@pytest.fixture
def register_client(app: Flask) -> FlaskClient:
    return bearer_client(app, REGISTER_KEY)


def gpu(model: str = "NVIDIA A100", vram_mb: int = 81920, **fields: Any) -> dict[str, Any]:
    """A GPU body with the required fields."""
    return {"model_name": model, "vram_mb": vram_mb, "driver_version": "550.54", **fields}


def provider_body(**fields: Any) -> dict[str, Any]:
    """A valid registration body; keyword arguments replace fields."""
    body = {
        "owner_id": "owner-1",
        "name": "rig-1",
        "hostname": "rig-1.example.net",
        "ip_address": "10.0.0.5",
        "location": "eu-west",
        "gpus": [gpu(architecture="ampere")],
        "metadata": {"rack": "r12"},
    }
    body.update(fields)
    return copy.deepcopy(body)


class Providers:
    """Actions a provider daemon takes, for tests (like flaskr's AuthActions)."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def register(self, **fields: Any) -> dict[str, Any]:
        response = self.client.post("/providers", json=provider_body(**fields))
        assert response.status_code in (200, 201), response.get_json()
        return response.get_json()

    def heartbeat(self, provider_id: str, **body: Any) -> dict[str, Any]:
        response = self.client.put(f"/providers/{provider_id}/status", json=body)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def get(self, provider_id: str) -> dict[str, Any]:
        response = self.client.get(f"/providers/{provider_id}")
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def ids(self, query: str = "", max_pages: int = 1000) -> list[str]:
        """IDs of every provider a query matches, following the pages (a bounded number)."""
        url, ids = f"/providers?{query}", []
        for _ in range(max_pages):
            if not url:
                return ids
            response = self.client.get(url)
            assert response.status_code == 200, response.get_json()
            ids += [p["id"] for p in response.get_json()]
            link = response.headers.get("Link")
            url = link[1 : link.index(">")] if link else ""
        if url:
            pytest.fail(f"paging did not end after {max_pages} pages: {query}")
        return ids


@pytest.fixture
def providers(client: FlaskClient) -> Providers:
    return Providers(client)


def new_id() -> str:
    return str(uuid.uuid4())


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def redis_state(client: redis.Redis) -> dict[str, Any]:
    """Every key of the database with its type and contents (not its TTL), to compare states.

    Rate-limit counters are left out: they count requests, accepted or not.
    """
    state: dict[str, Any] = {}
    for key in client.keys("*"):
        if key.startswith("registry:ratelimit:"):
            continue
        kind = client.type(key)
        if kind == "hash":
            value: Any = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = client.get(key)
        state[key] = (kind, value)
    return state


def provider_index_keys(client: redis.Redis, provider_id: str) -> list[str]:
    """Every key whose sorted set or set holds `provider_id`."""
    found = []
    for key in client.keys("*"):
        kind = client.type(key)
        if kind == "zset" and client.zscore(key, provider_id) is not None:
            found.append(key)
        elif kind == "set" and client.sismember(key, provider_id):
            found.append(key)
    return sorted(found)


@dataclass
class Daemon:
    """A provider registered with the registration key, and a client holding its own token."""

    id: str
    token: str
    client: FlaskClient


def register_daemon(app: Flask, **fields: Any) -> Daemon:
    """Register a provider as a daemon does, with the `register` key; keep its token."""
    response = bearer_client(app, REGISTER_KEY).post("/providers", json=provider_body(**fields))
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    return Daemon(id=body["id"], token=body["provider_token"], client=bearer_client(app, body["provider_token"]))


@pytest.fixture
def daemon(app: Flask) -> Daemon:
    return register_daemon(app)


# PostgreSQL: one database made for the test run on the machine's server, dropped at the end.
PG_ADMIN_URL = os.environ.get("REGISTRY_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of a database created for this test run (trust auth on 127.0.0.1)."""
    import psycopg

    name = f"registry_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_database: str) -> str:
    """The test run's database, with an empty schema before each test."""
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return pg_database


def sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one query on the test database and return its rows."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []
