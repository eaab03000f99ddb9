"""The platform's own Go daemon and scheduler, as their code talks to the registry.

The bodies below are built from the Go structs (`models.GPUDetail`, the daemon's GPU and
heartbeat structs): every field present, zero values where the daemon had nothing. Answers are
decoded as Go's `encoding/json` would: a field the Go struct declares as an integer must be a
JSON integer (Go refuses `2039.0` for a `uint64`).
"""
from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.gpu_fragments import gpus_json, gpus_of
from app.jobs.sweeper import Sweeper
from app.registry import EXTENSION
from app.store.migrations import migrate

from .conftest import bearer_client

# models.GPUDetail: field name -> Go type.
GO_GPU_FIELDS = {
    "model_name": str, "vram_mb": "uint64", "driver_version": str, "architecture": str,
    "compute_capability": str, "cuda_cores": "uint32", "tensor_cores": "uint32",
    "memory_bandwidth_gb_s": "uint64", "power_consumption_w": "uint32",
    "utilization_gpu_percent": "uint8", "utilization_memory_percent": "uint8",
    "temperature_c": "uint8", "power_draw_w": "uint32", "is_healthy": bool,
}
GO_INTEGER_BITS = {"uint8": 8, "uint32": 32, "uint64": 64}


class JSONFloat(str):
    """A number written with a fraction or exponent, as the JSON text had it."""


def go_decode(text: bytes | str) -> Any:
    """Decode JSON keeping track of numbers written as floats."""
    return json.loads(text, parse_float=JSONFloat)


def assert_go_gpu(gpu: dict[str, Any]) -> None:
    """Fail unless Go could decode this GPU into models.GPUDetail."""
    for name, value in gpu.items():
        kind = GO_GPU_FIELDS.get(name)
        assert kind is not None, f"field {name!r} is not in the Go struct"
        if kind in GO_INTEGER_BITS:
            assert type(value) is int, f"{name}: {value!r} is not a JSON integer"
            assert 0 <= value < 2 ** GO_INTEGER_BITS[kind], f"{name}: {value} overflows {kind}"
        else:
            assert isinstance(value, kind), f"{name}: {value!r} is not {kind.__name__}"


def assert_go_provider(provider: dict[str, Any]) -> None:
    for gpu in provider["gpus"]:
        assert_go_gpu(gpu)
    assert type(provider["version"]) is int


def rfc3339_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def go_gpu(**values: Any) -> dict[str, Any]:
    """models.GPUDetail as Go marshals it: every field, zero values unless given."""
    zero = {name: ("" if kind is str else False if kind is bool else 0) for name, kind in GO_GPU_FIELDS.items()}
    return {**zero, **values}


def daemon_metrics(**values: Any) -> dict[str, Any]:
    """The daemon's own GPU struct in a heartbeat: nvidia-smi's live values, the rest empty."""
    entry = go_gpu(**values)
    entry["temperature_celsius"] = entry.pop("temperature_c")
    return {**entry, "is_available": True, "last_check_at": rfc3339_now()}


def daemon_heartbeat(provider_id: str, *metrics: dict[str, Any]) -> dict[str, Any]:
    return {"provider_id": provider_id, "status": "online", "timestamp": rfc3339_now(),
            "gpu_metrics": list(metrics)}


def go_provider(provider_id: str, **values: Any) -> dict[str, Any]:
    """The Provider struct as the Go side marshals it for POST /providers."""
    body = {
        "id": provider_id, "owner_id": "owner-7", "name": "rig-7", "hostname": "", "ip_address": "",
        "status": "", "location": "", "registered_at": "0001-01-01T00:00:00Z",
        "last_seen_at": "0001-01-01T00:00:00Z", "metadata": None,
        "gpus": [go_gpu(model_name="NVIDIA A100 80GB PCIe", vram_mb=81920, driver_version="535.104.05",
                        architecture="Ampere", compute_capability="8.0", cuda_cores=6912,
                        tensor_cores=432, memory_bandwidth_gb_s=2039, power_consumption_w=300,
                        is_healthy=True)],
    }
    return {**body, **values}


@pytest.fixture
def open_app(make_app) -> Flask:
    """The registry as the Go clients need it: they send no credential."""
    return make_app(auth_enabled=False, heartbeat_ttl_s=30)


@pytest.fixture
def go(open_app: Flask) -> FlaskClient:
    return bearer_client(open_app, None)


def register(go: FlaskClient, **values: Any) -> str:
    provider_id = str(uuid.uuid4())
    response = go.post("/api/v1/providers", json=go_provider(provider_id, **values))
    assert response.status_code == 201, response.get_json()
    return provider_id


# ---- the daemon's heartbeat ------------------------------------------------------------------


def test_the_daemons_heartbeat_is_accepted_as_it_is_sent(go):
    provider_id = register(go)
    metrics = daemon_metrics(utilization_gpu_percent=87, utilization_memory_percent=40,
                             temperature_c=66, power_draw_w=250, is_healthy=True)
    response = go.post(f"/api/v1/providers/{provider_id}/heartbeat", json=daemon_heartbeat(provider_id, metrics))
    assert response.status_code == 200, response.get_json()
    gpu = go_decode(go.get(f"/api/v1/providers/{provider_id}").data)["gpus"][0]
    assert_go_gpu(gpu)
    assert (gpu["utilization_gpu_percent"], gpu["utilization_memory_percent"]) == (87, 40)
    assert (gpu["temperature_c"], gpu["power_draw_w"]) == (66, 250)
    # The empty static fields of the metrics entry changed nothing.
    assert (gpu["model_name"], gpu["vram_mb"], gpu["driver_version"]) == ("NVIDIA A100 80GB PCIe", 81920, "535.104.05")
    assert "is_available" not in gpu and "last_check_at" not in gpu and "temperature_celsius" not in gpu


def test_online_means_alive_the_status_stays_and_offline_comes_back_idle(go):
    busy = register(go, status="busy")
    assert go.post(f"/api/v1/providers/{busy}/heartbeat", json=daemon_heartbeat(busy)).get_json()["status"] == "busy"
    gone = register(go)
    assert go.put(f"/providers/{gone}/status", json={"status": "offline"}).status_code == 200
    answer = go.post(f"/api/v1/providers/{gone}/heartbeat", json=daemon_heartbeat(gone)).get_json()
    assert answer["status"] == "idle"


def test_a_heartbeat_naming_another_provider_is_refused(go):
    first, second = register(go), register(go)
    response = go.post(f"/api/v1/providers/{first}/heartbeat", json=daemon_heartbeat(second))
    assert response.status_code == 400
    assert list(response.get_json()["details"]) == ["provider_id"]


def test_a_heartbeat_of_an_unknown_provider_is_404(go):
    unknown = str(uuid.uuid4())
    response = go.post(f"/api/v1/providers/{unknown}/heartbeat", json=daemon_heartbeat(unknown))
    assert response.status_code == 404
    assert response.get_json()["code"] == "provider_not_found"


@pytest.mark.parametrize("field", ["uptime_s", "gpu_temperature"])
def test_other_unknown_fields_are_still_refused(go, field):
    provider_id = register(go)
    body = daemon_heartbeat(provider_id, daemon_metrics())
    body["gpu_metrics"][0][field] = 1
    assert go.post(f"/api/v1/providers/{provider_id}/heartbeat", json=body).status_code == 400
    assert go.post(f"/api/v1/providers/{provider_id}/heartbeat", json={**daemon_heartbeat(provider_id), field: 1}).status_code == 400


def test_a_provider_heartbeated_only_by_the_daemon_stays_live_past_three_leases(make_app):
    app = make_app(auth_enabled=False, heartbeat_ttl_s=1)
    go, store = bearer_client(app, None), app.extensions[EXTENSION].store
    provider_id = register(go)
    sweeper = Sweeper(store, interval_s=1)
    deadline = time.monotonic() + 3.5  # three and a half leases
    while time.monotonic() < deadline:
        body = daemon_heartbeat(provider_id, daemon_metrics(utilization_gpu_percent=50))
        assert go.post(f"/api/v1/providers/{provider_id}/heartbeat", json=body).status_code == 200
        assert sweeper.sweep_once() == []
        assert go.get(f"/providers/{provider_id}").get_json()["status"] == "idle"
        time.sleep(0.25)
    events = go.get("/providers/events?after=0").get_json()["events"]
    assert not [e for e in events if e["type"] == "offline"]


# ---- integers stay integers in every answer ----------------------------------------------------


def test_every_integer_gpu_field_is_a_json_integer_in_every_answer(go, open_app):
    provider_id = register(go)
    metrics = daemon_metrics(utilization_gpu_percent=3, utilization_memory_percent=4, temperature_c=5,
                             power_draw_w=6, is_healthy=True)
    go.post(f"/api/v1/providers/{provider_id}/heartbeat", json=daemon_heartbeat(provider_id, metrics))
    answers = [
        go_decode(go.get(f"/providers/{provider_id}").data),
        *go_decode(go.get("/providers").data),
        *go_decode(go.get("/api/v1/providers?limit=10").data),
    ]
    claim = go.post("/providers/claim", json={"gpu_model": "a100"})
    assert claim.status_code == 200
    answers += go_decode(claim.data)["providers"]
    for provider in answers:
        assert_go_provider(provider)
    for event in go_decode(go.get("/providers/events?after=0").data)["events"]:
        assert "version" not in event or type(event["version"]) is int


def test_numbers_sent_as_whole_floats_are_stored_and_answered_as_integers(go):
    gpu = go_gpu(model_name="NVIDIA A100", vram_mb=81920.0, driver_version="535", memory_bandwidth_gb_s=2039.0,
                 power_consumption_w=400.0, utilization_gpu_percent=12.0, temperature_c=61.0)
    provider_id = register(go, gpus=[gpu])
    assert_go_provider(go_decode(go.get(f"/providers/{provider_id}").data))


def test_a_fractional_value_for_an_integer_field_is_400(go):
    response = go.post("/providers", json=go_provider(str(uuid.uuid4()), gpus=[go_gpu(
        model_name="A100", vram_mb=81920, driver_version="535", utilization_gpu_percent=12.5)]))
    assert response.status_code == 400
    assert "gpus" in response.get_json()["details"]


def as_version_1(redis_db, key: str, text: str) -> None:
    """Make a provider's hash hold its GPUs as version 1 did: one JSON list in `gpus`."""
    redis_db.hset(key, "gpus", text)
    redis_db.hdel(key, "gpu_specs", "gpu_live")


def test_floats_stored_by_version_1_are_answered_as_integers(go, open_app, redis_db):
    provider_id = register(go)
    key = f"registry:provider:{provider_id}"
    gpus = gpus_of(redis_db.hgetall(key))
    gpus[0].update(memory_bandwidth_gb_s=2039.0, temperature_c=40.0, utilization_gpu_percent=12.0)
    as_version_1(redis_db, key, json.dumps(gpus))
    assert "2039.0" in redis_db.hget(key, "gpus")
    assert_go_provider(go_decode(go.get(f"/providers/{provider_id}").data))
    assert_go_provider(go_decode(go.get("/providers").data)[0])
    # The migration to layout 3 stores them as integers.
    redis_db.set("registry:layout", "2")
    migrate(open_app.extensions[EXTENSION].store)
    stored = redis_db.hgetall(key)
    assert '"memory_bandwidth_gb_s":2039,' in stored["gpu_specs"] and '"temperature_c":40,' in stored["gpu_live"]
    assert_go_provider(go_decode(go.get(f"/providers/{provider_id}").data))


@pytest.mark.parametrize("written", ["2039.0", "2.039e3", "2039E0", "2039.0 "])
def test_any_float_spelling_in_a_stored_gpu_list_is_answered_as_an_integer(go, redis_db, written):
    # Lua's cjson wrote numbers over 1e14 with an exponent; version 1 wrote "2039.0".
    provider_id = register(go)
    key = f"registry:provider:{provider_id}"
    text = gpus_json(redis_db.hgetall(key))
    as_version_1(redis_db, key, text.replace('"memory_bandwidth_gb_s":2039', f'"memory_bandwidth_gb_s": {written}'))
    assert written.strip() in redis_db.hget(key, "gpus")
    gpu = go_decode(go.get(f"/providers/{provider_id}").data)["gpus"][0]
    assert_go_provider({"gpus": [gpu], "version": 1})
    assert gpu["memory_bandwidth_gb_s"] == 2039


def test_a_restored_provider_is_answered_with_integers(go, open_app, redis_db):
    provider_id = register(go)
    store = open_app.extensions[EXTENSION].store
    now, hashes = store.read_hashes([provider_id])
    redis_db.flushall()
    assert store.restore(hashes, now) == 1
    assert_go_provider(go_decode(go.get(f"/providers/{provider_id}").data))


# ---- registration and details as the original server took them ---------------------------------


def test_the_go_provider_struct_registers_with_its_zero_values(go):
    provider_id = register(go)
    shown = go.get(f"/providers/{provider_id}").get_json()
    assert shown["status"] == "idle"  # "" is the default status
    assert shown["hostname"] is None and shown["location"] is None and shown["ip_address"] is None
    assert shown["registered_at"] != "0001-01-01T00:00:00Z"
    assert "cuda_cores" in shown["gpus"][0]


def test_an_empty_driver_version_is_an_unknown_driver_and_reads_back_empty(go):
    gpu = go_gpu(model_name="NVIDIA L4", vram_mb=24576, driver_version="")
    provider_id = register(go, gpus=[gpu])
    assert go.get(f"/providers/{provider_id}").get_json()["gpus"][0]["driver_version"] == ""


def test_put_takes_the_whole_object_get_returned(go):
    provider_id = register(go)
    shown = go.get(f"/providers/{provider_id}").get_json()
    shown["name"] = "rig-7b"
    shown["gpus"][0]["driver_version"] = "550.54"
    response = go.put(f"/providers/{provider_id}", json=shown)
    assert response.status_code == 200, response.get_json()
    after = go.get(f"/providers/{provider_id}").get_json()
    assert after["name"] == "rig-7b" and after["gpus"][0]["driver_version"] == "550.54"
    assert go.delete(f"/providers/{provider_id}").status_code == 204
