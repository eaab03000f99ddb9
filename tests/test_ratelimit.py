"""Rate limits: heartbeats per provider, requests per client, 429 with Retry-After."""
from __future__ import annotations

from typing import Iterator

import pytest
import redis
from flask import Flask

from app import create_app
from app.config import ConfigError, Settings, load_settings
from app.registry import EXTENSION

from .conftest import ADMIN_KEY, READ_KEY, bearer_client, provider_body, register_daemon


def limited_app(settings: Settings, **limits: object) -> Flask:
    app = create_app(Settings(**{**settings.__dict__, **limits}))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def tight_heartbeats(settings: Settings, redis_db: redis.Redis) -> Iterator[Flask]:
    app = limited_app(settings, rate_limit_heartbeat="3/minute")
    yield app
    app.extensions[EXTENSION].close()


@pytest.fixture
def tight_clients(settings: Settings, redis_db: redis.Redis) -> Iterator[Flask]:
    app = limited_app(settings, rate_limit_per_client="5/minute")
    yield app
    app.extensions[EXTENSION].close()


def test_heartbeats_past_the_per_provider_limit_get_429_with_retry_after(tight_heartbeats: Flask) -> None:
    daemon = register_daemon(tight_heartbeats)
    url = f"/providers/{daemon.id}/heartbeat"
    assert [daemon.client.post(url).status_code for _ in range(3)] == [200, 200, 200]
    refused = daemon.client.post(url)
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "too_many_requests"
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    # Status changes go through the same allowance.
    assert daemon.client.put(f"/providers/{daemon.id}/status", json={"status": "busy"}).status_code == 429


def test_one_providers_heartbeats_do_not_use_up_anothers_allowance(tight_heartbeats: Flask) -> None:
    first, second = register_daemon(tight_heartbeats), register_daemon(tight_heartbeats)
    for _ in range(4):
        first.client.post(f"/providers/{first.id}/heartbeat")
    assert second.client.post(f"/providers/{second.id}/heartbeat").status_code == 200


def test_refused_heartbeats_with_a_forged_token_do_not_use_up_the_providers_allowance(
    tight_heartbeats: Flask,
) -> None:
    daemon = register_daemon(tight_heartbeats)
    forger = bearer_client(tight_heartbeats, "forged-token")
    for _ in range(5):
        assert forger.post(f"/providers/{daemon.id}/heartbeat").status_code == 401
    assert daemon.client.post(f"/providers/{daemon.id}/heartbeat").status_code == 200


def test_requests_past_the_per_client_limit_get_429_and_other_clients_are_unaffected(
    tight_clients: Flask,
) -> None:
    reader = bearer_client(tight_clients, READ_KEY)
    statuses = [reader.get("/providers").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    assert int(reader.get("/providers").headers["Retry-After"]) >= 1
    assert bearer_client(tight_clients, ADMIN_KEY).get("/providers").status_code == 200


@pytest.fixture
def tight_strangers(settings: Settings, redis_db: redis.Redis) -> Iterator[Flask]:
    app = limited_app(settings, rate_limit_unauthenticated="20/minute", rate_limit_per_client="1000/minute")
    yield app
    app.extensions[EXTENSION].close()


def test_unknown_credentials_share_the_address_bucket_instead_of_getting_fresh_ones(
    tight_strangers: Flask,
) -> None:
    statuses = [bearer_client(tight_strangers, f"guess-{i}").get("/providers").status_code for i in range(21)]
    assert statuses == [401] * 20 + [429]
    refused = bearer_client(tight_strangers, None).get("/providers")
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "too_many_requests"
    assert int(refused.headers["Retry-After"]) >= 1


def test_a_bad_credential_flood_from_one_address_never_refuses_a_valid_token(
    tight_strangers: Flask,
) -> None:
    daemons = [register_daemon(tight_strangers) for _ in range(40)]
    flooder = bearer_client(tight_strangers, "wrong-key")
    valid, flood = [], []
    for round_ in range(5):
        for i, daemon in enumerate(daemons):
            valid.append(daemon.client.put(f"/providers/{daemon.id}/status", json={}).status_code)
            # The flood hits both routes that take no token and the daemons' own routes.
            flood.append(flooder.get("/providers").status_code)
            target = daemons[(i + 1) % len(daemons)].id
            flood.append(flooder.post(f"/api/v1/providers/{target}/heartbeat").status_code)
    assert valid == [200] * 200
    assert flood[:20] == [401] * 20
    assert set(flood[20:]) == {429}
    # The daemons' heartbeats went through the heartbeat limit only: none was refused.
    assert all(daemon.client.get(f"/providers/{daemon.id}").status_code == 200 for daemon in daemons)


def test_service_keys_are_limited_per_key_apart_from_floods(tight_clients: Flask) -> None:
    for i in range(30):
        bearer_client(tight_clients, f"guess-{i}").get("/providers")
    reader, admin = bearer_client(tight_clients, READ_KEY), bearer_client(tight_clients, ADMIN_KEY)
    assert [reader.get("/providers").status_code for _ in range(6)] == [200] * 5 + [429]
    assert admin.get("/providers").status_code == 200


def test_health_is_never_rate_limited(tight_clients: Flask) -> None:
    anonymous = bearer_client(tight_clients, None)
    assert {anonymous.get("/health").status_code for _ in range(8)} == {200}


def test_accepted_requests_carry_no_retry_after(tight_heartbeats: Flask) -> None:
    daemon = register_daemon(tight_heartbeats)
    assert "Retry-After" not in daemon.client.post(f"/providers/{daemon.id}/heartbeat").headers


def test_rate_limit_counters_live_under_the_registry_key_prefix(
    tight_heartbeats: Flask, redis_db: redis.Redis
) -> None:
    daemon = register_daemon(tight_heartbeats)
    daemon.client.get(f"/providers/{daemon.id}")
    counters = redis_db.keys("*LIMITER*")
    assert counters and all(key.startswith("registry:ratelimit:") for key in counters)
    # The heartbeat limit is counted by the heartbeat script, in the provider's own hash.
    daemon.client.post(f"/providers/{daemon.id}/heartbeat")
    assert redis_db.hget(f"registry:provider:{daemon.id}", "heartbeat_windows") is not None
    assert sorted(redis_db.keys("*LIMITER*")) == sorted(counters)


def test_rate_limiting_can_be_turned_off(settings: Settings, redis_db: redis.Redis) -> None:
    app = limited_app(settings, rate_limit_enabled=False, rate_limit_per_client="1/minute")
    try:
        reader = bearer_client(app, READ_KEY)
        assert {reader.get("/providers").status_code for _ in range(3)} == {200}
        assert redis_db.keys("*LIMITER*") == []
    finally:
        app.extensions[EXTENSION].close()


@pytest.mark.parametrize(
    "key",
    ["REGISTRY_RATE_LIMIT_PER_CLIENT", "REGISTRY_RATE_LIMIT_HEARTBEAT", "REGISTRY_RATE_LIMIT_UNAUTHENTICATED"],
)
def test_a_rate_limit_that_does_not_parse_is_a_config_error(tmp_path, key: str) -> None:
    with pytest.raises(ConfigError, match="rate limit"):
        load_settings(tmp_path / "c.yaml", env={key: "lots per day"})


def test_registration_is_limited_per_client_too(tight_clients: Flask) -> None:
    admin = bearer_client(tight_clients, ADMIN_KEY)
    statuses = [admin.post("/providers", json=provider_body()).status_code for _ in range(6)]
    assert statuses == [201] * 5 + [429]
