"""The published contract: /openapi.json covers every route, /docs shows it offline."""
from __future__ import annotations

import re

import schemathesis
from flask import Flask
from flask.testing import FlaskClient

from app.openapi import OPERATIONS, openapi_path, view_key


def test_the_document_is_openapi_3_and_loads_in_schemathesis(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.is_json
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["version"]
    loaded = schemathesis.openapi.from_dict(spec)
    assert len([op for op in loaded.get_all_operations() if op.ok()]) >= 20


def test_every_route_and_method_is_in_the_document(app: Flask, client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path, params = openapi_path(rule)
        assert path in spec["paths"], rule.rule
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = spec["paths"][path][method.lower()]
            assert operation["responses"], (method, path)
            documented = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert documented == {p["name"] for p in params}


def test_every_view_is_described_by_its_schemas(app: Flask) -> None:
    undescribed = sorted(
        view_key(view) for endpoint, view in app.view_functions.items()
        if endpoint != "static" and view_key(view) not in OPERATIONS
    )
    assert undescribed == [], "describe these views in app/openapi.py OPERATIONS"


def test_bodies_parameters_and_errors_are_documented(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    register = spec["paths"]["/providers"]["post"]
    assert register["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Register"}
    assert {"201", "400", "401", "403", "413", "415", "429", "503"} <= set(register["responses"])
    assert "provider_token" in spec["components"]["schemas"]["Registered"]["properties"]
    listing = spec["paths"]["/providers"]["get"]
    assert {"gpu_model", "min_vram", "min_gpus", "status", "limit", "cursor"} <= {p["name"] for p in listing["parameters"]}
    error = spec["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "code"}
    unauthorized = spec["paths"]["/providers/{provider_id}"]["delete"]["responses"]["401"]
    assert "WWW-Authenticate" in unauthorized["headers"]
    assert unauthorized["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_security_follows_the_routes_decorators(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    assert paths["/health"]["get"]["security"] == []
    delete = paths["/providers/{provider_id}"]["delete"]
    assert delete["security"] == [{"bearer": []}]
    assert "provider's own token" in delete["description"]
    assert "`read` role" in paths["/providers"]["get"]["description"]


def test_the_docs_page_shows_every_operation_and_loads_nothing_from_elsewhere(
    anonymous_client: FlaskClient,
) -> None:
    spec = anonymous_client.get("/openapi.json").get_json()
    response = anonymous_client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    for path, item in spec["paths"].items():
        for operation in item.values():
            assert f'id="{operation["operationId"]}"' in page, path
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page
