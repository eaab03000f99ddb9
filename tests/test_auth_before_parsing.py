"""Authenticate before parsing: a bearer that is no key and no token gets 401 whatever the body."""
from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import MAX_BODY_BYTES
from app.keyring import hash_secret
from app.registry import EXTENSION
from app.store import ProviderStore

from .conftest import (
    ADMIN_KEY,
    REGISTER_KEY,
    SCHEDULE_KEY,
    Daemon,
    bearer_client,
    new_id,
    provider_body,
    register_daemon,
)

UNKNOWN_TOKEN = "a-bearer-that-is-no-key-and-no-token"


def invalid_requests(provider_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, URL, request options) of every provider-token route, each body invalid."""
    bad_details = provider_body(gpus="many")
    return [
        ("POST", "/providers", {"json": bad_details}),
        ("POST", "/providers", {"json": {**bad_details, "id": provider_id}}),
        ("POST", f"/providers/{provider_id}/heartbeat", {"json": {"status": "exploded"}}),
        ("PUT", f"/providers/{provider_id}/status", {"json": {"status": "exploded"}}),
        ("PATCH", f"/providers/{provider_id}/status", {"json": {"status": "exploded"}}),
        ("PUT", f"/providers/{provider_id}", {"json": bad_details}),
        ("POST", f"/providers/{provider_id}/release", {"json": {"claim_id": "not-a-uuid"}}),
        ("POST", f"/providers/{provider_id}/heartbeat", {"data": "{", "content_type": "application/json"}),
        ("POST", f"/providers/{provider_id}/heartbeat", {"json": ["not", "an", "object"]}),
        ("PUT", f"/providers/{provider_id}", {"data": "name=x", "content_type": "text/plain"}),
        ("POST", "/providers", {"data": "{", "content_type": "application/json"}),
    ]


def call(client: FlaskClient, method: str, url: str, options: dict[str, Any]):
    return client.open(url, method=method, **options)


def assert_unauthorized(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 401, response.get_json()
    body = response.get_json()
    assert body["code"] == "unauthorized" and body["details"] == {}
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def assert_unreadable(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code in (400, 415), response.get_json()
    assert response.get_json()["code"] in ("validation_error", "malformed_json", "unsupported_media_type")


def test_an_unknown_bearer_with_an_invalid_body_gets_401_on_every_provider_token_route(
    app: Flask, daemon: Daemon
) -> None:
    stranger = bearer_client(app, UNKNOWN_TOKEN)
    for method, url, options in invalid_requests(daemon.id):
        assert_unauthorized(call(stranger, method, url, options))


def test_an_unknown_bearer_naming_an_unknown_provider_with_an_invalid_body_gets_401(app: Flask) -> None:
    stranger = bearer_client(app, UNKNOWN_TOKEN)
    for method, url, options in invalid_requests(new_id()):
        assert_unauthorized(call(stranger, method, url, options))


def test_the_providers_own_token_sees_the_validation_details(daemon: Daemon) -> None:
    for method, url, options in invalid_requests(daemon.id):
        if url == "/providers" and "id" not in options.get("json", {}):
            continue  # names no provider: no token can be valid for it (below)
        response = call(daemon.client, method, url, options)
        assert_unreadable(response)
    details = daemon.client.post(f"/providers/{daemon.id}/heartbeat", json={"status": "exploded"})
    assert "status" in details.get_json()["details"]


def test_a_token_registering_without_an_id_gets_401_even_with_an_invalid_body(daemon: Daemon) -> None:
    # A token may only re-register its own provider, so with no `id` it is not valid here.
    assert_unauthorized(daemon.client.post("/providers", json=provider_body(gpus="many")))


def test_another_providers_token_with_an_invalid_body_gets_401(app: Flask, daemon: Daemon) -> None:
    other = register_daemon(app, name="other")
    for method, url, options in invalid_requests(daemon.id):
        assert_unauthorized(call(other.client, method, url, options))


@pytest.mark.parametrize("key", [ADMIN_KEY, SCHEDULE_KEY, REGISTER_KEY], ids=["admin", "schedule", "register"])
def test_a_service_key_with_the_role_sees_the_validation_details(app: Flask, daemon: Daemon, key: str) -> None:
    routes = {
        ADMIN_KEY: ("POST", "/providers", {"json": provider_body(gpus="many")}),
        SCHEDULE_KEY: ("POST", f"/providers/{daemon.id}/heartbeat", {"json": {"status": "exploded"}}),
        REGISTER_KEY: ("POST", "/providers", {"json": provider_body(gpus="many")}),
    }
    response = call(bearer_client(app, key), *routes[key])
    assert response.status_code == 400
    assert response.get_json()["details"]


def test_with_auth_disabled_an_invalid_body_gets_400_with_details(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(auth_enabled=False)
    anyone = bearer_client(app, UNKNOWN_TOKEN)
    response = anyone.post("/providers", json=provider_body(gpus="many"))
    assert response.status_code == 400 and "gpus" in response.get_json()["details"]
    response = anyone.post(f"/providers/{new_id()}/heartbeat", json={"status": "exploded"})
    assert response.status_code == 400 and "status" in response.get_json()["details"]


def test_a_body_too_large_is_401_for_an_unknown_bearer_and_413_for_the_providers_token(
    app: Flask, daemon: Daemon
) -> None:
    huge = {"data": b"x" * (MAX_BODY_BYTES + 1), "content_type": "application/json"}
    url = f"/providers/{daemon.id}/heartbeat"
    assert_unauthorized(call(bearer_client(app, UNKNOWN_TOKEN), "POST", url, huge))
    assert call(daemon.client, "POST", url, huge).status_code == 413


def test_a_valid_request_with_a_token_costs_no_extra_token_check(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store's script checks the token on the way; the separate check is for errors only.
    def refuse(*args: Any) -> bool:
        raise AssertionError("token_matches called on the success path")

    monkeypatch.setattr(ProviderStore, "token_matches", refuse)
    assert daemon.client.post(f"/providers/{daemon.id}/heartbeat", json={"status": "busy"}).status_code == 200
    assert daemon.client.put(f"/providers/{daemon.id}", json=provider_body(name="renamed")).status_code == 200
    assert daemon.client.post("/providers", json=provider_body(id=daemon.id)).status_code == 200


def test_token_matches_compares_with_the_stored_hash(app: Flask, daemon: Daemon) -> None:
    store = app.extensions[EXTENSION].store
    assert store.token_matches(daemon.id, hash_secret(daemon.token))
    assert not store.token_matches(daemon.id, hash_secret(UNKNOWN_TOKEN))
    assert not store.token_matches(new_id(), hash_secret(daemon.token))
