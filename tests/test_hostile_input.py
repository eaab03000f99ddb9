"""Hostile input: names that try to escape their Redis index, and bounds on everything."""
from __future__ import annotations

import re

import pytest
import redis
from flask.testing import FlaskClient

from app.bounds import MAX_QUERY_BYTES, MAX_QUERY_PARAMS
from app.store.keys import canonical_name, fold_name

from .conftest import Providers, gpu, provider_body

HOSTILE_MODELS = [
    "A100",
    "A100:2",  # would collide with "at least 2 A100s" if the count were not kept apart
    "A100:*",
    "*",
    "gpu:A100:1",
    "{A100}",
    "A100 80GB",
    "A100\u00a080GB",  # no-break space
    "Ａ１００",  # full-width digits and letters
    "RTX ✓ 4090 ünïcödé",
    "x" * 256,
    "a%3A2",  # already looks percent-encoded
    "a+b",
    "a b",
    "registry:provider:00000000-0000-4000-8000-000000000000",
]
# Printable ASCII without space: what `redis-cli --scan` prints one key a line, unquoted.
PLAIN_KEY = re.compile(r"^[\x21-\x7e]+$")


def test_hostile_model_names_each_find_exactly_their_own_provider(
    providers: Providers, redis_db: redis.Redis
) -> None:
    owner = {}
    for model in HOSTILE_MODELS:
        owner[model] = providers.register(name=model[:50], gpus=[gpu(model)])["id"]
    for model in HOSTILE_MODELS:
        query = {"gpu_model_exact": model}
        ids = providers.ids("&".join(f"{k}={v}" for k, v in _encoded(query).items()))
        same = {m for m in HOSTILE_MODELS if canonical_name(m) == canonical_name(model)}
        assert set(ids) == {owner[m] for m in same}, model
        # As a substring, it finds every model whose folded name contains it.
        query = {"gpu_model": model}
        ids = providers.ids("&".join(f"{k}={v}" for k, v in _encoded(query).items()))
        containing = {m for m in HOSTILE_MODELS if fold_name(model) in fold_name(m)}
        assert set(ids) == {owner[m] for m in containing}, model


def _encoded(params: dict[str, str]) -> dict[str, str]:
    from urllib.parse import quote

    return {key: quote(value, safe="") for key, value in params.items()}


def test_hostile_names_stay_inside_their_own_index_keys(providers: Providers, redis_db: redis.Redis) -> None:
    for model in HOSTILE_MODELS:
        providers.register(gpus=[gpu(model, architecture=model[:64])], location=model)
    keys = redis_db.keys("*")
    assert all(PLAIN_KEY.match(key) for key in keys), [k for k in keys if not PLAIN_KEY.match(k)]
    structure = re.compile(
        r"^registry:(?:gpu:[A-Za-z0-9%._~+-]+:\d+(?::\d+:[a-z]+)?|gpus:\d+(?::\d+:[a-z]+)?"
        r"|arch:[A-Za-z0-9%._~+-]+"
        r"|location:[A-Za-z0-9%._~+-]+|provider:[0-9a-f-]{36}|lease:[0-9a-f-]{36}"
        r"|status:[a-z]+|providers|leases|claims|irregular|events|counts|catalog:(?:gpu|arch)"
        r"|ratelimit:.*)$"
    )
    assert [key for key in keys if not structure.match(key)] == []
    # The catalogs hold each canonical name once, its folded name as the value.
    assert redis_db.hgetall("registry:catalog:gpu") == {canonical_name(m): fold_name(m) for m in HOSTILE_MODELS}
    # Each model got its own index: as many model indexes as distinct canonical names.
    model_indexes = {key.split(":")[2] for key in keys if key.startswith("registry:gpu:")}
    assert len(model_indexes) == len({canonical_name(m) for m in HOSTILE_MODELS})


def test_names_that_differ_only_in_case_or_spacing_share_one_canonical_form() -> None:
    assert canonical_name("NVIDIA  A100 ") == canonical_name("nvidia a100") == "nvidia+a100"
    assert canonical_name("A100:2") == "a100%3A2"
    assert canonical_name("*") == "%2A"
    assert canonical_name("Straße") == canonical_name("STRASSE")


def test_a_10000_character_model_name_is_refused(client: FlaskClient) -> None:
    response = client.post("/providers", json=provider_body(gpus=[gpu("x" * 10_000)]))
    assert response.status_code == 400
    assert "model_name" in response.get_json()["details"]["gpus"]["0"]


@pytest.mark.parametrize("char", ["\x00", "\x01", "\n", "\x1f", "\x7f"], ids=repr)
@pytest.mark.parametrize("field", ["owner_id", "name", "hostname", "location"])
def test_control_characters_in_names_are_refused(client: FlaskClient, field: str, char: str) -> None:
    response = client.post("/providers", json=provider_body(**{field: f"rig{char}1"}))
    assert response.status_code == 400
    assert field in response.get_json()["details"]


@pytest.mark.parametrize("field", ["model_name", "driver_version", "architecture"])
def test_nul_in_gpu_names_is_refused(client: FlaskClient, field: str) -> None:
    response = client.post("/providers", json=provider_body(gpus=[gpu(**{field: "a\x00b"})]))
    assert response.status_code == 400


def test_nul_in_a_query_filter_is_refused(client: FlaskClient) -> None:
    response = client.get("/providers?gpu_model=a%00b")
    assert response.status_code == 400
    assert "gpu_model" in response.get_json()["details"]


def test_a_body_over_64_KiB_is_refused_with_413(client: FlaskClient) -> None:
    body = b'{"owner_id": "' + b"x" * (64 * 1024) + b'"}'
    response = client.post("/providers", data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["code"] == "request_entity_too_large"


def test_json_nested_deeper_than_the_decoder_recurses_is_a_400(client: FlaskClient) -> None:
    response = client.post("/providers", data="[" * 50_000, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["code"] == "malformed_json"


def test_metadata_too_deep_or_too_large_is_refused(client: FlaskClient) -> None:
    deep: dict = {}
    node = deep
    for _ in range(9):
        node["k"] = {}
        node = node["k"]
    assert client.post("/providers", json=provider_body(metadata=deep)).status_code == 400
    big = {"blob": "x" * 9000}
    assert client.post("/providers", json=provider_body(metadata=big)).status_code == 400


def test_more_than_64_gpus_or_gpu_metrics_are_refused(client: FlaskClient, providers: Providers) -> None:
    assert client.post("/providers", json=provider_body(gpus=[gpu()] * 65)).status_code == 400
    provider_id = providers.register()["id"]
    response = client.post(f"/providers/{provider_id}/heartbeat", json={"gpu_metrics": [{}] * 65})
    assert response.status_code == 400


def test_a_page_size_above_1000_is_refused(client: FlaskClient) -> None:
    assert client.get("/providers?limit=1001").status_code == 400
    assert client.get("/providers?limit=1000").status_code == 200


def test_a_query_string_too_long_is_refused(client: FlaskClient) -> None:
    response = client.get("/providers?gpu_model=" + "a" * MAX_QUERY_BYTES)
    assert response.status_code == 400
    assert "query" in response.get_json()["details"]


def test_too_many_query_parameters_are_refused(client: FlaskClient) -> None:
    query = "&".join(["status=idle"] * (MAX_QUERY_PARAMS + 1))
    response = client.get(f"/providers?{query}")
    assert response.status_code == 400
    assert client.get("/providers?" + "&".join(["status=idle"] * MAX_QUERY_PARAMS)).status_code == 200


def test_an_id_that_is_not_a_uuid_cannot_name_a_key(client: FlaskClient) -> None:
    for bad in ("..%2F..", "*", "x:y", "%00"):
        assert client.get(f"/providers/{bad}").status_code == 404
    assert client.post("/providers", json=provider_body(id="registry:leases")).status_code == 400


@pytest.mark.parametrize(
    "after",
    ["18446744073709551616-0", "0-18446744073709551616", "99999999999999999999",
     "18446744073709551615-18446744073709551615", "\u0663\u0664-0", "\u00d4"],
)
def test_a_stream_id_past_64_bits_is_a_400_not_a_store_error(client: FlaskClient, after: str) -> None:
    # Found by the schemathesis run: Redis refused the ID and the API answered 503.
    response = client.get("/providers/events", query_string={"after": after})
    assert response.status_code == 400
    assert "after" in response.get_json()["details"]
    assert client.get("/providers/events?after=18446744073709551615-0").status_code == 200
