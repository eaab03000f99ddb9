"""Errors that say what to do: which role a route needs, and that provider IDs are UUIDs."""
from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from .conftest import Daemon, bearer_client
from .test_bad_input import assert_error


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/providers/not-a-uuid"),
        ("PUT", "/providers/123"),
        ("DELETE", "/providers/rig-1"),
        ("POST", "/providers/rig-1/heartbeat"),
        ("PUT", "/providers/rig-1/status"),
        ("POST", "/providers/rig-1/claim/confirm"),
        ("POST", "/api/v1/providers/rig-1/heartbeat"),
        # Without hyphens: uuid.UUID would take it, the routes do not.
        ("GET", "/providers/3f2b8c1e5d4a4e6b9c7d1a2b3c4d5e6f"),
    ],
)
def test_a_malformed_provider_id_is_404_json_saying_ids_are_uuids(
    client: FlaskClient, method: str, path: str
) -> None:
    body = assert_error(client.open(path, method=method, json={}), 404, "provider_not_found")
    assert "provider IDs are UUIDs" in body["error"]


def test_a_malformed_id_is_told_even_to_a_caller_without_credentials(anonymous_client: FlaskClient) -> None:
    # Routing comes before authentication, and the answer tells nothing about any provider.
    assert_error(anonymous_client.get("/providers/rig-1"), 404, "provider_not_found")


def test_a_path_that_no_id_would_make_a_route_stays_a_plain_404(client: FlaskClient) -> None:
    assert_error(client.get("/providers/rig-1/nope"), 404, "not_found")
    assert_error(client.get("/providers/"), 404, "not_found")


def test_a_key_without_the_role_is_403_naming_the_role_it_needs(register_client: FlaskClient) -> None:
    body = assert_error(register_client.get("/providers"), 403, "forbidden")
    assert "read or admin role" in body["error"]
    assert body["details"]["required_roles"] == ["read", "admin"]
    assert body["details"]["key_roles"] == ["register"]


def test_a_key_without_the_role_on_a_provider_route_is_told_the_token_works_too(
    read_client: FlaskClient, daemon: Daemon
) -> None:
    body = assert_error(read_client.delete(f"/providers/{daemon.id}"), 403, "forbidden")
    assert "admin role or the provider's own token" in body["error"]
    assert body["details"]["provider_token_accepted"] is True


@pytest.mark.parametrize(
    "path, role", [("/providers", "read"), ("/providers/summary", "read"), ("/providers/events", "read")]
)
def test_a_provider_token_on_a_route_for_service_keys_is_told_which_key_it_needs(
    daemon: Daemon, path: str, role: str
) -> None:
    # 401, not 403: only a lookup by the token's hash could tell a valid token from a guess.
    body = assert_error(daemon.client.get(path), 401, "unauthorized")
    assert f"needs a service key with the {role} or admin role" in body["error"]
    assert "provider tokens are not accepted here" in body["error"]
    assert body["details"] == {"required_roles": [role, "admin"], "provider_token_accepted": False}


def test_a_provider_token_cannot_claim_and_is_told_the_schedule_role(daemon: Daemon) -> None:
    body = assert_error(daemon.client.post("/providers/claim", json={"count": 1}), 401, "unauthorized")
    assert body["details"]["required_roles"] == ["schedule", "admin"]


def test_no_credential_is_still_asked_for_one(app: Flask) -> None:
    body = assert_error(bearer_client(app, None).get("/providers"), 401, "unauthorized")
    assert "needs a credential" in body["error"]
