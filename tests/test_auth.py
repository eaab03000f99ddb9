"""Authentication and authorisation: service keys with roles, provider tokens, auth off."""
from __future__ import annotations

import hmac
import json
import logging
import re
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.keyring import KeyRing, ServiceKey, hash_secret, load_service_keys
from app.config import ConfigError, Settings, default_yaml, load_settings
from app.registry import EXTENSION

from .conftest import (
    ADMIN_KEY,
    READ_KEY,
    REGISTER_KEY,
    SCHEDULE_KEY,
    Daemon,
    bearer_client,
    new_id,
    provider_body,
    register_daemon,
)

# The dashboard's page and assets hold no data: its script asks the API with the operator's key.
PUBLIC_PATHS = {"/health", "/openapi.json", "/docs", "/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css"}
SAMPLE_ID = "00000000-0000-4000-8000-000000000000"


def protected_routes(app: Flask) -> list[tuple[str, str]]:
    """Every (method, URL) of the app except the public ones, with a sample provider ID."""
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule in PUBLIC_PATHS:
            continue
        url = re.sub(r"<[^>]+>", SAMPLE_ID, rule.rule)
        routes += [(method, url) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


def call(client: FlaskClient, method: str, url: str, **kwargs):
    return client.open(url, method=method, **kwargs)


# -- every route is guarded ------------------------------------------------------------------


def test_every_route_but_health_and_the_contract_declares_who_may_call_it(app: Flask) -> None:
    unguarded = [
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        and rule.rule not in PUBLIC_PATHS
        and not hasattr(app.view_functions[rule.endpoint], "required_roles")
    ]
    assert unguarded == []


def test_a_request_without_credentials_gets_401_with_a_bearer_challenge(
    app: Flask, anonymous_client: FlaskClient
) -> None:
    routes = protected_routes(app)
    assert len(routes) >= 9
    for method, url in routes:
        response = call(anonymous_client, method, url, json=provider_body())
        assert response.status_code == 401, (method, url)
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="provider-registry"'
        assert response.get_json()["code"] == "unauthorized"


def test_an_unknown_key_gets_401_invalid_token(app: Flask) -> None:
    response = bearer_client(app, "no-such-key").get("/providers")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "Token abc", "Bearer " + "x" * 10_000],
    ids=["basic", "empty-bearer", "blank-bearer", "other-scheme", "10k-credential"],
)
def test_a_malformed_authorization_header_gets_401(anonymous_client: FlaskClient, header: str) -> None:
    response = anonymous_client.get("/providers", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthorized"


def test_health_and_the_contract_need_no_credentials(anonymous_client: FlaskClient) -> None:
    for url in sorted(PUBLIC_PATHS):
        assert anonymous_client.get(url).status_code == 200, url


# -- provider tokens -------------------------------------------------------------------------


def test_registration_returns_a_256_bit_token_once_and_stores_only_its_hash(
    app: Flask, redis_db: redis.Redis
) -> None:
    response = bearer_client(app, REGISTER_KEY).post("/providers", json=provider_body())
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    token = body["provider_token"]
    assert len(token) >= 43  # token_urlsafe(32): 32 random bytes in base64
    assert redis_db.hget(f"registry:provider:{body['id']}", "token_hash") == hash_secret(token)
    everything = json.dumps({key: redis_db.dump(key).hex() for key in redis_db.keys("*")})
    assert token not in everything and token.encode().hex() not in everything


def test_reads_never_show_the_token_or_its_hash(client: FlaskClient, daemon: Daemon) -> None:
    for url in (f"/providers/{daemon.id}", "/providers"):
        text = client.get(url).get_data(as_text=True)
        assert daemon.token not in text and "token" not in text


def test_a_provider_token_heartbeats_updates_reads_and_deregisters_its_own_provider(
    daemon: Daemon,
) -> None:
    own = daemon.client
    assert own.post(f"/providers/{daemon.id}/heartbeat", json={"status": "busy"}).status_code == 200
    assert own.put(f"/providers/{daemon.id}/status", json={"status": "idle"}).status_code == 200
    assert own.put(f"/providers/{daemon.id}", json=provider_body(name="renamed")).status_code == 200
    assert own.get(f"/providers/{daemon.id}").get_json()["name"] == "renamed"
    assert own.delete(f"/providers/{daemon.id}").status_code == 204


def test_a_provider_token_cannot_touch_another_provider(app: Flask, client: FlaskClient) -> None:
    mine, theirs = register_daemon(app), register_daemon(app, name="theirs")
    before = client.get(f"/providers/{theirs.id}").get_json()
    attempts = [
        ("POST", f"/providers/{theirs.id}/heartbeat", {"status": "maintenance"}),
        ("PUT", f"/providers/{theirs.id}/status", {"status": "busy"}),
        ("PATCH", f"/providers/{theirs.id}/status", {"status": "error"}),
        ("PUT", f"/providers/{theirs.id}", provider_body(name="hijacked")),
        ("DELETE", f"/providers/{theirs.id}", None),
        ("GET", f"/providers/{theirs.id}", None),
        ("POST", f"/providers/{theirs.id}/token", None),
        ("POST", "/providers", provider_body(id=theirs.id, name="hijacked")),
    ]
    for method, url, body in attempts:
        response = call(mine.client, method, url, json=body)
        assert response.status_code == 401, (method, url, response.get_json())
        assert mine.token not in response.get_data(as_text=True)
    after = client.get(f"/providers/{theirs.id}").get_json()
    assert after == before
    # The victim's own token still works: nothing was rotated.
    assert theirs.client.post(f"/providers/{theirs.id}/heartbeat").status_code == 200


def test_a_provider_token_can_neither_list_nor_create_providers(daemon: Daemon) -> None:
    assert daemon.client.get("/providers").status_code == 401
    assert daemon.client.post("/providers", json=provider_body()).status_code == 401
    assert daemon.client.post("/providers", json=provider_body(id=new_id())).status_code == 401


def test_reregistering_with_the_own_token_keeps_the_token(daemon: Daemon) -> None:
    response = daemon.client.post("/providers", json=provider_body(id=daemon.id, name="restarted"))
    assert response.status_code == 200
    assert "provider_token" not in response.get_json()
    assert response.get_json()["name"] == "restarted"
    assert daemon.client.post(f"/providers/{daemon.id}/heartbeat").status_code == 200


def test_admin_reregistration_issues_a_new_token_and_voids_the_old(
    client: FlaskClient, app: Flask, daemon: Daemon
) -> None:
    response = client.post("/providers", json=provider_body(id=daemon.id))
    assert response.status_code == 200
    new_token = response.get_json()["provider_token"]
    assert daemon.client.post(f"/providers/{daemon.id}/heartbeat").status_code == 401
    assert bearer_client(app, new_token).post(f"/providers/{daemon.id}/heartbeat").status_code == 200


def test_rotating_the_token_voids_the_old_one_at_once(app: Flask, daemon: Daemon) -> None:
    response = daemon.client.post(f"/providers/{daemon.id}/token")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    rotated = response.get_json()["provider_token"]
    assert rotated != daemon.token and response.get_json()["provider_id"] == daemon.id
    assert daemon.client.post(f"/providers/{daemon.id}/heartbeat").status_code == 401
    assert bearer_client(app, rotated).post(f"/providers/{daemon.id}/heartbeat").status_code == 200


def test_admin_can_rotate_any_providers_token(app: Flask, client: FlaskClient, daemon: Daemon) -> None:
    rotated = client.post(f"/providers/{daemon.id}/token").get_json()["provider_token"]
    assert daemon.client.get(f"/providers/{daemon.id}").status_code == 401
    assert bearer_client(app, rotated).get(f"/providers/{daemon.id}").status_code == 200


def test_rotating_an_unknown_provider_is_404(client: FlaskClient) -> None:
    assert client.post(f"/providers/{new_id()}/token").status_code == 404


# -- service keys and roles ------------------------------------------------------------------


def test_a_read_key_lists_and_gets_but_cannot_change_anything(
    read_client: FlaskClient, daemon: Daemon, client: FlaskClient
) -> None:
    assert read_client.get("/providers").status_code == 200
    assert read_client.get(f"/providers/{daemon.id}").status_code == 200
    for method, url, body in [
        ("DELETE", f"/providers/{daemon.id}", None),
        ("PUT", f"/providers/{daemon.id}", provider_body()),
        ("PUT", f"/providers/{daemon.id}/status", {"status": "busy"}),
        ("POST", f"/providers/{daemon.id}/heartbeat", None),
        ("POST", f"/providers/{daemon.id}/token", None),
        ("POST", "/providers", provider_body()),
    ]:
        response = call(read_client, method, url, json=body)
        assert response.status_code == 403, (method, url)
        assert response.get_json()["code"] == "forbidden"
        assert "WWW-Authenticate" not in response.headers
    assert client.get(f"/providers/{daemon.id}").get_json()["status"] == "idle"


def test_a_schedule_key_changes_status_but_cannot_deregister_or_edit_details(
    schedule_client: FlaskClient, daemon: Daemon
) -> None:
    response = schedule_client.put(f"/providers/{daemon.id}/status", json={"status": "busy"})
    assert response.status_code == 200 and response.get_json()["status"] == "busy"
    assert schedule_client.delete(f"/providers/{daemon.id}").status_code == 403
    assert schedule_client.put(f"/providers/{daemon.id}", json=provider_body()).status_code == 403
    assert schedule_client.post(f"/providers/{daemon.id}/token").status_code == 403


def test_a_register_key_creates_providers_but_cannot_replace_or_list_them(
    register_client: FlaskClient, client: FlaskClient, daemon: Daemon
) -> None:
    kept_id = new_id()
    created = register_client.post("/providers", json=provider_body(id=kept_id))
    assert created.status_code == 201 and created.get_json()["id"] == kept_id
    replaced = register_client.post("/providers", json=provider_body(id=daemon.id, name="hijacked"))
    assert replaced.status_code == 403
    assert client.get(f"/providers/{daemon.id}").get_json()["name"] == "rig-1"
    assert daemon.client.post(f"/providers/{daemon.id}/heartbeat").status_code == 200
    assert register_client.get("/providers").status_code == 403


def test_admin_may_do_everything(client: FlaskClient, daemon: Daemon) -> None:
    assert client.put(f"/providers/{daemon.id}", json=provider_body(name="x")).status_code == 200
    assert client.post(f"/providers/{daemon.id}/heartbeat").status_code == 200
    assert client.delete(f"/providers/{daemon.id}").status_code == 204


def test_key_matching_compares_with_every_key_whatever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [ServiceKey(f"k{i}", hash_secret(f"secret-{i}"), frozenset({"read"})) for i in range(5)]
    calls = []
    real = hmac.compare_digest

    def counting(a, b):  # type: ignore[no-untyped-def]
        calls.append(a)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    ring = KeyRing(keys)
    assert ring.match(hash_secret("secret-0")) == keys[0]
    assert ring.match(hash_secret("nothing")) is None
    assert len(calls) == 10  # five comparisons each time, even when the first matched


# -- configuration ---------------------------------------------------------------------------


def test_auth_is_on_by_default_in_settings_and_in_the_shipped_config() -> None:
    assert Settings().auth_enabled is True
    assert "auth_enabled: true" in default_yaml()
    shipped = Path(__file__).resolve().parents[1] / "configs" / "config.yaml"
    assert load_settings(shipped, env={}).auth_enabled is True


def test_service_keys_come_from_config_file_and_environment(tmp_path: Path, redis_db: redis.Redis, settings: Settings) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "api_keys:\n"
        f"  - {{name: from-config, sha256: {hash_secret('k1')}, roles: [read]}}\n"
        f"api_keys_file: {tmp_path / 'keys.json'}\n"
    )
    (tmp_path / "keys.json").write_text(
        json.dumps({"api_keys": [{"name": "from-file", "sha256": hash_secret("k2"), "roles": ["admin"]}]})
    )
    env = {
        "REGISTRY_REDIS_URL": settings.redis_url,
        "REGISTRY_API_KEYS": json.dumps(
            [{"name": "from-env", "sha256": hash_secret("k3"), "roles": ["read"]}]
        ),
    }
    loaded = load_settings(config, env=env)
    # The environment replaces the file's api_keys, as for every setting; the file adds its own.
    assert sorted(key.name for key in load_service_keys(loaded)) == ["from-env", "from-file"]
    app = create_app(loaded)
    try:
        assert bearer_client(app, "k3").get("/providers").status_code == 200
        assert bearer_client(app, "k2").get("/providers").status_code == 200
        assert bearer_client(app, "k1").get("/providers").status_code == 401
    finally:
        app.extensions[EXTENSION].close()


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "x", "sha256": "abc", "roles": ["read"]}, "64 hex digits"),
        ({"name": "x", "sha256": "g" * 64, "roles": ["read"]}, "64 hex digits"),
        ({"name": "x", "sha256": "a" * 64, "roles": ["root"]}, "roles"),
        ({"name": "x", "sha256": "a" * 64, "roles": []}, "roles"),
        ({"name": "", "sha256": "a" * 64, "roles": ["read"]}, "name"),
        ({"name": "x", "sha256": "a" * 64, "roles": ["read"], "key": "plain"}, "mapping"),
    ],
)
def test_a_bad_service_key_entry_is_a_config_error(tmp_path: Path, entry: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path / "c.yaml", env={"REGISTRY_API_KEYS": json.dumps([entry])})


def test_two_keys_with_one_name_are_a_config_error(tmp_path: Path) -> None:
    entries = [{"name": "x", "sha256": c * 64, "roles": ["read"]} for c in "ab"]
    with pytest.raises(ConfigError, match="share one name"):
        load_settings(tmp_path / "c.yaml", env={"REGISTRY_API_KEYS": json.dumps(entries)})


def test_a_missing_keys_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read api_keys_file"):
        load_settings(tmp_path / "c.yaml", env={"REGISTRY_API_KEYS_FILE": str(tmp_path / "none")})


# -- auth off --------------------------------------------------------------------------------


def test_with_auth_disabled_anyone_may_call_and_one_warning_is_logged(
    settings: Settings, redis_db: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    app = create_app(Settings(**{**settings.__dict__, "auth_enabled": False}))
    try:
        warnings = [r for r in caplog.records if "authentication is disabled" in r.getMessage()]
        assert len(warnings) == 1
        anonymous = bearer_client(app, None)
        created = anonymous.post("/providers", json=provider_body())
        assert created.status_code == 201
        provider_id = created.get_json()["id"]
        assert anonymous.post(f"/providers/{provider_id}/heartbeat").status_code == 200
        assert anonymous.delete(f"/providers/{provider_id}").status_code == 204
    finally:
        app.extensions[EXTENSION].close()


def test_no_warning_is_logged_when_auth_is_on(settings: Settings, redis_db: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    app = create_app(settings)
    app.extensions[EXTENSION].close()
    assert not [r for r in caplog.records if "authentication is disabled" in r.getMessage()]


# -- secrets stay secret ---------------------------------------------------------------------


def test_no_secret_appears_in_logs_or_error_bodies(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    daemon = register_daemon(app)
    bodies = [
        daemon.client.post(f"/providers/{daemon.id}/heartbeat").get_data(as_text=True),
        bearer_client(app, daemon.token + "x").post(f"/providers/{daemon.id}/heartbeat").get_data(as_text=True),
        bearer_client(app, READ_KEY).delete(f"/providers/{daemon.id}").get_data(as_text=True),
        bearer_client(app, "wrong-" + ADMIN_KEY).get("/providers").get_data(as_text=True),
        daemon.client.post(f"/providers/{daemon.id}/token").get_data(as_text=True).split('"provider_token"')[0],
    ]
    logged = "\n".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert "request" in logged  # the access log did run
    for secret in (daemon.token, ADMIN_KEY, READ_KEY, REGISTER_KEY, SCHEDULE_KEY):
        assert secret not in logged
        assert all(secret not in body for body in bodies)


def test_new_key_prints_a_secret_once_with_an_entry_that_admits_it(
    capsys: pytest.CaptureFixture[str], settings: Settings, redis_db: redis.Redis
) -> None:
    from app.cli import main

    assert main(["new-key", "scheduler-eu", "--roles", "read,schedule"]) == 0
    out = capsys.readouterr().out
    secret = re.search(r"^key:\s+(\S+)$", out, re.M).group(1)  # type: ignore[union-attr]
    entry = json.loads(re.search(r"^entry:\s+(.+)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert entry == {"name": "scheduler-eu", "sha256": hash_secret(secret), "roles": ["read", "schedule"]}
    assert secret not in json.dumps(entry)
    app = create_app(Settings(**{**settings.__dict__, "api_keys": [entry]}))
    try:
        assert bearer_client(app, secret).get("/providers").status_code == 200
    finally:
        app.extensions[EXTENSION].close()


def test_new_key_refuses_an_unknown_role(capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    assert main(["new-key", "x", "--roles", "root"]) == 2
    assert "key:" not in capsys.readouterr().out


def test_a_daemon_releases_its_own_claim_with_its_token_but_not_anothers(
    app: Flask, schedule_client: FlaskClient
) -> None:
    mine, theirs = register_daemon(app), register_daemon(app, name="theirs")
    granted = schedule_client.post("/providers/claim", json={"count": 2}).get_json()
    claim_id = granted["claim_id"]
    refused = mine.client.post(f"/providers/{theirs.id}/release", json={"claim_id": claim_id})
    assert refused.status_code == 401
    assert schedule_client.get(f"/providers/{theirs.id}").get_json()["status"] == "busy"
    released = mine.client.post(f"/providers/{mine.id}/release", json={"claim_id": claim_id})
    assert released.status_code == 200 and released.get_json()["status"] == "idle"
    # A daemon cannot claim: that is the schedulers' role.
    assert mine.client.post("/providers/claim", json={"count": 1}).status_code == 401


def test_claims_events_and_summary_need_their_roles(
    read_client: FlaskClient, register_client: FlaskClient
) -> None:
    assert read_client.post("/providers/claim", json={"count": 1}).status_code == 403
    assert read_client.get("/providers/summary").status_code == 200
    assert read_client.get("/providers/events").status_code == 200
    assert register_client.get("/providers/summary").status_code == 403
    assert register_client.get("/providers/events").status_code == 403
