"""Bad input: every rejection is JSON {"error", "code", "details"} and writes nothing."""
from __future__ import annotations

import io
import json
from typing import Any, Iterator

import pytest
from werkzeug.test import EnvironBuilder

from .conftest import ADMIN_KEY, gpu, new_id, provider_body, redis_state


@pytest.fixture
def existing(providers) -> dict[str, Any]:
    """A registered provider, so that failed writes have something to half-change."""
    return providers.register(status="busy", gpus=[gpu("A100", 40960), gpu("A100", 40960)])


@pytest.fixture
def unchanged(redis_db, existing) -> Iterator[None]:
    """Assert that the test leaves every Redis key exactly as it found it."""
    before = redis_state(redis_db)
    pexpire = redis_db.pttl(f"registry:lease:{existing['id']}")
    yield
    assert redis_state(redis_db) == before
    # A rejected heartbeat must not renew the lease either.
    assert redis_db.pttl(f"registry:lease:{existing['id']}") <= pexpire


def assert_error(response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "code", "details"}
    assert isinstance(body["error"], str) and body["error"]
    assert body["code"] == code
    assert isinstance(body["details"], dict)
    if field is not None:
        assert field in body["details"], body["details"]
    return body


def cases(table: list[tuple], skip: tuple[str, ...] = ()):
    """Parametrize a test with the rows of `table` (id first), except the `skip` ids."""
    rows = [row for row in table if row[0] not in skip]
    names = "body, field" if len(rows[0]) == 3 else "raw"
    values = [row[1:] if len(row) == 3 else row[1] for row in rows]
    return pytest.mark.parametrize(names, values, ids=[row[0] for row in rows])


def nested(depth: int) -> dict[str, Any]:
    """A JSON object nested `depth` levels deep (the object itself is level 1)."""
    value: Any = []
    for _ in range(depth - 2):
        value = [value]
    return {"a": value}


def with_gpu(**fields: Any) -> dict[str, Any]:
    return provider_body(gpus=[gpu(**fields)])


# Bodies that fit JSON but not the schema, with the field each is reported under.
INVALID_BODIES = [
    ("unknown_field", provider_body(colour="red"), "colour"),
    ("unknown_gpu_field", provider_body(gpus=[gpu(colour="red")]), "gpus"),
    ("missing_owner_id", {k: v for k, v in provider_body().items() if k != "owner_id"}, "owner_id"),
    ("missing_name", {k: v for k, v in provider_body().items() if k != "name"}, "name"),
    ("missing_gpus", {k: v for k, v in provider_body().items() if k != "gpus"}, "gpus"),
    ("null_owner_id", provider_body(owner_id=None), "owner_id"),
    ("owner_id_number", provider_body(owner_id=12), "owner_id"),
    ("name_boolean", provider_body(name=True), "name"),
    ("gpus_string", provider_body(gpus="A100"), "gpus"),
    ("gpus_of_strings", provider_body(gpus=["A100"]), "gpus"),
    ("gpus_empty", provider_body(gpus=[]), "gpus"),
    ("gpus_65", provider_body(gpus=[gpu()] * 65), "gpus"),
    ("vram_string", with_gpu(vram_mb="81920"), "gpus"),
    ("vram_fraction", with_gpu(vram_mb=1.5), "gpus"),
    ("vram_zero", with_gpu(vram_mb=0), "gpus"),
    ("vram_negative", with_gpu(vram_mb=-1), "gpus"),
    ("vram_over_4tib", with_gpu(vram_mb=4_194_305), "gpus"),
    ("gpu_without_vram", provider_body(gpus=[{"model_name": "A100", "driver_version": "1"}]), "gpus"),
    ("is_healthy_string", with_gpu(is_healthy="true"), "gpus"),
    ("is_healthy_number", with_gpu(is_healthy=1), "gpus"),
    ("temperature_string", with_gpu(temperature_c="hot"), "gpus"),
    ("utilization_over_100", with_gpu(utilization_gpu_percent=101), "gpus"),
    ("cuda_cores_float", with_gpu(cuda_cores=1.5), "gpus"),
    ("owner_id_empty", provider_body(owner_id=""), "owner_id"),
    ("name_blank", provider_body(name="   "), "name"),
    ("model_name_empty", with_gpu(model="", vram_mb=1), "gpus"),
    ("driver_version_control", provider_body(gpus=[{**gpu(), "driver_version": "535\x00"}]), "gpus"),
    ("utilization_fraction", with_gpu(utilization_gpu_percent=12.5), "gpus"),
    ("name_257_chars", provider_body(name="x" * 257), "name"),
    ("owner_id_257_chars", provider_body(owner_id="x" * 257), "owner_id"),
    ("hostname_257_chars", provider_body(hostname="x" * 257), "hostname"),
    ("location_257_chars", provider_body(location="x" * 257), "location"),
    ("model_name_257_chars", with_gpu(model="x" * 257), "gpus"),
    ("name_with_control_character", provider_body(name="rig\x00"), "name"),
    ("ip_address_not_an_address", provider_body(ip_address="10.0.0.300"), "ip_address"),
    ("metadata_list", provider_body(metadata=[1, 2]), "metadata"),
    ("metadata_string", provider_body(metadata="rack 12"), "metadata"),
    ("metadata_over_8kib", provider_body(metadata={"blob": "x" * 8192}), "metadata"),
    ("metadata_nested_9_deep", provider_body(metadata=nested(9)), "metadata"),
    ("id_not_uuid", provider_body(id="rig-1"), "id"),
    ("status_unknown", provider_body(status="sleeping"), "status"),
    ("status_offline_on_register", provider_body(status="offline"), "status"),
]


@cases(INVALID_BODIES)
def test_register_rejects_invalid_body_with_400_and_writes_nothing(client, unchanged, body, field):
    assert_error(client.post("/providers", json=body), 400, "validation_error", field)


# `id` and `status` are not details: PUT rejects them as unknown fields (tested apart).
@cases(INVALID_BODIES, skip=("id_not_uuid", "status_unknown", "status_offline_on_register"))
def test_put_details_rejects_invalid_body_with_400_and_writes_nothing(
    client, existing, unchanged, body, field
):
    response = client.put(f"/providers/{existing['id']}", json=body)
    assert_error(response, 400, "validation_error", field)


def test_reregistration_with_invalid_body_leaves_the_provider_as_it_was(client, existing, unchanged):
    body = provider_body(id=existing["id"], gpus=[gpu(vram_mb=0)])
    assert_error(client.post("/providers", json=body), 400, "validation_error", "gpus")


def test_validation_details_name_the_gpu_and_field(client, unchanged):
    body = provider_body(gpus=[gpu(), gpu(vram_mb=0)])
    details = assert_error(client.post("/providers", json=body), 400, "validation_error")["details"]
    assert list(details["gpus"]) == ["1"]
    assert list(details["gpus"]["1"]) == ["vram_mb"]


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "x" * 256, "owner_id": "o" * 256, "hostname": "h" * 256, "location": "l" * 256},
        {"gpus": [gpu(vram_mb=1)]},
        {"gpus": [gpu(vram_mb=4_194_304)]},
        {"gpus": [gpu()] * 64},
        {"metadata": {"blob": "x" * (8192 - len('{"blob":""}'))}},
        {"metadata": nested(8)},
        {"hostname": None, "location": None, "ip_address": None},
        {"ip_address": "2001:db8::1"},
    ],
    ids=["256_chars", "vram_1", "vram_4tib", "64_gpus", "metadata_8kib", "metadata_8_deep", "nulls", "ipv6"],
)
def test_bounds_themselves_are_accepted(client, fields):
    response = client.post("/providers", json=provider_body(**fields))
    assert response.status_code == 201, response.get_json()


@pytest.mark.parametrize("depth", [500, 900])
def test_metadata_nested_hundreds_deep_is_400_not_500(client, unchanged, depth):
    # Parses as JSON, but a depth check that recursed all the way would exhaust the stack.
    raw = json.dumps(provider_body(metadata={}))
    raw = raw.replace('"metadata": {}', '"metadata": {"a": ' + "[" * depth + "]" * depth + "}")
    response = client.post("/providers", data=raw, content_type="application/json")
    assert_error(response, 400, "validation_error", "metadata")


INVALID_HEARTBEATS = [
    ("unknown_field", {"state": "busy"}, "state"),
    ("status_unknown", {"status": "sleeping"}, "status"),
    ("status_number", {"status": 1}, "status"),
    ("gpu_metrics_object", {"gpu_metrics": {"temperature_c": 1}}, "gpu_metrics"),
    ("gpu_metrics_wrong_type", {"gpu_metrics": [{"temperature_c": "hot"}]}, "gpu_metrics"),
    ("gpu_metrics_unknown_field", {"gpu_metrics": [{"fan": 1}]}, "gpu_metrics"),
    ("gpu_metrics_65", {"gpu_metrics": [{}] * 65}, "gpu_metrics"),
    ("is_healthy_string", {"gpu_metrics": [{"is_healthy": "no"}]}, "gpu_metrics"),
]


@cases(INVALID_HEARTBEATS)
def test_heartbeat_rejects_invalid_body_without_renewing_or_changing(
    client, existing, unchanged, body, field
):
    response = client.put(f"/providers/{existing['id']}/status", json=body)
    assert_error(response, 400, "validation_error", field)


MALFORMED = [
    ("truncated", b'{"owner_id": "o"'),
    ("single_quotes", b"{'owner_id': 'o'}"),
    ("trailing_garbage", b'{"owner_id": "o"} x'),
    ("nan", b'{"owner_id": "o", "gpus": [{"vram_mb": NaN}]}'),
    ("infinity", b'{"gpus": [{"temperature_c": Infinity}]}'),
    ("invalid_utf8", b'{"owner_id": "\xff\xfe"}'),
    ("deeply_nested", b'{"metadata": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"),
    ("whitespace_only", b"   "),
]


@cases(MALFORMED)
def test_malformed_json_is_400_malformed_json(client, unchanged, raw):
    response = client.post("/providers", data=raw, content_type="application/json")
    assert_error(response, 400, "malformed_json")


# An empty heartbeat body is fine (tested in test_heartbeat).
@cases(MALFORMED, skip=("whitespace_only",))
def test_malformed_json_heartbeat_is_400(client, existing, unchanged, raw):
    url = f"/providers/{existing['id']}/status"
    assert_error(client.put(url, data=raw, content_type="application/json"), 400, "malformed_json")


@pytest.mark.parametrize("value", [[], [provider_body()], "provider", 1, None, True], ids=repr)
def test_body_that_is_not_an_object_is_400(client, existing, unchanged, value):
    raw = json.dumps(value)
    for response in (
        client.post("/providers", data=raw, content_type="application/json"),
        client.put(f"/providers/{existing['id']}", data=raw, content_type="application/json"),
        client.put(f"/providers/{existing['id']}/status", data=raw, content_type="application/json"),
    ):
        assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_wrong_content_type_is_415(client, existing, unchanged, content_type):
    raw = json.dumps(provider_body())
    kwargs: dict[str, Any] = {"data": raw}
    if content_type:
        kwargs["content_type"] = content_type
    assert_error(client.post("/providers", **kwargs), 415, "unsupported_media_type")
    assert_error(client.put(f"/providers/{existing['id']}", **kwargs), 415, "unsupported_media_type")
    beat = client.put(f"/providers/{existing['id']}/status", **{**kwargs, "data": '{"status": "idle"}'})
    assert_error(beat, 415, "unsupported_media_type")


def test_json_content_type_with_charset_is_accepted(client):
    raw = json.dumps(provider_body())
    response = client.post("/providers", data=raw, content_type="application/json; charset=utf-8")
    assert response.status_code == 201


def test_body_over_64_kib_is_413(client, existing, unchanged):
    big = json.dumps(provider_body(metadata={"blob": "x" * (64 * 1024)}))
    response = client.post("/providers", data=big, content_type="application/json")
    assert_error(response, 413, "request_entity_too_large")
    beat = client.put(f"/providers/{existing['id']}/status", data=big, content_type="application/json")
    assert_error(beat, 413, "request_entity_too_large")


def test_body_over_64_kib_without_content_length_is_413(app, unchanged):
    raw = json.dumps(provider_body(metadata={"blob": "x" * (64 * 1024)})).encode()
    builder = EnvironBuilder(
        path="/providers", method="POST", input_stream=io.BytesIO(raw),
        headers={
            "Content-Type": "application/json", "Transfer-Encoding": "chunked",
            "Authorization": f"Bearer {ADMIN_KEY}",
        },
    )
    environ = builder.get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input_terminated"] = True
    with app.request_context(environ):
        response = app.full_dispatch_request()
    assert_error(response, 413, "request_entity_too_large")


@pytest.mark.parametrize(
    "path", ["/nope", "/providers/not-a-uuid/nope", "/api/v2/providers", "/providers/", "/api/v1/health"]
)
def test_unknown_route_is_404_json(client, path):
    assert_error(client.get(path), 404, "not_found")


@pytest.mark.parametrize(
    "method, path",
    [
        ("delete", "/providers"),
        ("put", "/providers"),
        ("post", "/providers/{id}"),
        ("patch", "/providers/{id}"),
        ("get", "/providers/{id}/heartbeat"),
        ("get", "/providers/{id}/status"),
        ("delete", "/health"),
        ("post", "/api/v1/providers/{id}"),
    ],
)
def test_wrong_method_is_405_json_with_allow(client, existing, unchanged, method, path):
    response = getattr(client, method)(path.format(id=existing["id"]))
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"]


def test_unknown_provider_is_404_json_on_every_route(client, unchanged):
    unknown = new_id()
    for response in (
        client.get(f"/providers/{unknown}"),
        client.put(f"/providers/{unknown}", json=provider_body()),
        client.put(f"/providers/{unknown}/status", json={}),
        client.delete(f"/providers/{unknown}"),
    ):
        assert_error(response, 404, "provider_not_found")
