"""Property: any sequence of writes leaves the indexes equal to a recomputation from the hashes.

Hypothesis draws sequences of register, heartbeat, status change, update and delete over a
few provider IDs and a few (partly hostile) model names, runs them through the store, then
rebuilds every index from the provider hashes alone and compares it with what Redis holds.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.errors import ProviderNotFound
from app.gpu_fragments import gpus_of
from app.registry import Registry
from app.models import Filters
from app.store.keys import LIVE_STATUSES, STATUSES, Keys, canonical_name, fold_name
from app.store.indexing import gpu_buckets, gpu_token, index_entries

IDS = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(2)]
# Few names, so that providers are often regular (one canonical model) and writes can flip
# them between regular and irregular; "a100 " is "A100" canonically, the others are hostile.
MODELS = ["A100", "a100 ", "A100:2", "RTX*4090 ünï", "NVIDIA A1000"]
EXAMPLES = 200

gpus = st.lists(
    st.fixed_dictionaries(
        {
            "model_name": st.sampled_from([*MODELS[:2] * 4, *MODELS]),
            "vram_mb": st.sampled_from([8192, 24576, 81920]),
            "driver_version": st.just("550"),
            "is_healthy": st.sampled_from([True, True, True, False]),
        },
        optional={"architecture": st.sampled_from(["ampere", "AMPERE", "Ada Lovelace"])},
    ),
    min_size=1,
    max_size=4,
)
details = st.fixed_dictionaries(
    {"owner_id": st.just("o"), "name": st.just("n"), "gpus": gpus, "metadata": st.just({})},
    optional={"location": st.sampled_from(["eu-west", "EU-WEST", "us:east", "*"])},
)
provider_id = st.sampled_from(IDS)
register = st.tuples(st.just("register"), provider_id, details, st.sampled_from(LIVE_STATUSES))
# Each GPU's health alone (merged in Lua), or every live value (the plain renewal's metrics).
metrics = st.tuples(st.sampled_from(["metrics", "complete metrics"]), provider_id, st.none(),
                    st.lists(st.booleans(), min_size=1, max_size=4))
# Registrations and metrics weigh double: together they flip providers (ir)regular.
operations = st.one_of(
    register,
    register,
    metrics,
    metrics,
    st.tuples(st.just("heartbeat"), provider_id, st.none(), st.none()),
    st.tuples(st.just("status"), provider_id, st.none(), st.sampled_from(STATUSES)),
    st.tuples(st.just("update"), provider_id, details, st.none()),
    st.tuples(st.just("delete"), provider_id, st.none(), st.none()),
)


def apply(registry: Registry, op: tuple[str, str, Any, Any]) -> None:
    kind, pid, body, extra = op
    store = registry.store
    try:
        if kind == "register":
            store.register(pid, body, extra)
        elif kind == "heartbeat":
            store.heartbeat(pid)
        elif kind == "status":
            store.heartbeat(pid, status=extra)
        elif kind == "metrics":
            store.heartbeat(pid, gpu_metrics=[{"is_healthy": healthy} for healthy in extra])
        elif kind == "complete metrics":
            store.heartbeat(pid, gpu_metrics=[
                {"utilization_gpu_percent": 50, "utilization_memory_percent": 5, "temperature_c": 60,
                 "power_draw_w": 200, "is_healthy": healthy} for healthy in extra
            ])
        elif kind == "update":
            store.update(pid, body)
        else:
            store.delete(pid)
    except ProviderNotFound:
        pass  # an operation on an ID not registered (yet or any more) changes nothing


def recomputed(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Every index as the provider hashes alone say it should be."""
    zsets: dict[str, dict[str, float]] = defaultdict(dict)
    irregular = set()
    catalogs: dict[str, dict[str, str]] = {keys.gpu_catalog: {}, keys.arch_catalog: {}}
    for hash_key in client.scan_iter(match=f"{keys.provider_prefix}*"):
        fields = client.hgetall(hash_key)
        pid, gpus_list = fields["id"], gpus_of(fields)
        entries = index_entries(keys, {"gpus": gpus_list, "location": fields.get("location")})
        for key, score in entries:
            zsets[key][pid] = float(score)
        assert set(fields["index_keys"].split()) == {key for key, _ in entries}
        # GPU indexes: the provider in the bucket of its status, the index holding the size.
        for index, vram in gpu_buckets(keys, {"gpus": gpus_list}):
            zsets[Keys.bucket(index, vram, fields["status"])][pid] = float(vram)
            zsets[index][str(vram)] = float(vram)
        for gpu in gpus_list:
            catalogs[keys.gpu_catalog][canonical_name(gpu["model_name"])] = fold_name(gpu["model_name"])
            if gpu.get("architecture"):
                name = gpu["architecture"]
                catalogs[keys.arch_catalog][canonical_name(name)] = fold_name(name)
        zsets[keys.status(fields["status"])][pid] = 0.0
        zsets[keys.providers][pid] = 0.0
        if fields["status"] != "offline":
            zsets[keys.leases][pid] = float(fields["lease_expires_at"])
            assert client.exists(keys.lease(pid))
        # Regular: every GPU of one canonical model and architecture (VRAM may differ).
        tokens = {gpu_token(gpu).rsplit("|", 1)[0] for gpu in gpus_list}
        if len(tokens) > 1 or any(gpu.get("is_healthy") is False for gpu in gpus_list):
            irregular.add(pid)
    return {"zsets": dict(zsets), "irregular": irregular, "catalogs": catalogs}


def stored(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Every index as Redis holds it."""
    zsets = {}
    for key in client.scan_iter(match=f"{keys.prefix}*"):
        if client.type(key) == "zset":
            zsets[key] = dict(client.zrange(key, 0, -1, withscores=True))
    catalogs = {key: client.hgetall(key) for key in (keys.gpu_catalog, keys.arch_catalog)}
    return {"zsets": zsets, "irregular": client.smembers(keys.irregular), "catalogs": catalogs}


def _body(*models: str, healthy: bool = True, location: str | None = "eu-west") -> dict[str, Any]:
    gpus = [{"model_name": m, "vram_mb": 81920, "driver_version": "550", "is_healthy": healthy} for m in models]
    body: dict[str, Any] = {"owner_id": "o", "name": "n", "gpus": gpus, "metadata": {}}
    if location:
        body["location"] = location
    return body


# Sequences known to be delicate run first, every time; the drawn ones explore the rest.
@example(ops=[  # live metrics turn a provider irregular, then regular again
    ("register", IDS[0], _body("A100"), "idle"),
    ("metrics", IDS[0], None, [False]),
    ("metrics", IDS[0], None, [True]),
])
@example(ops=[  # names equal once canonical share an index; a replacement moves every index
    ("register", IDS[0], _body("A100", "a100 "), "busy"),
    ("update", IDS[0], _body("A100:2", "RTX*4090 ünï", location="us:east"), None),
    ("register", IDS[1], _body("a100 ", healthy=False, location=None), "idle"),
    ("delete", IDS[0], None, None),
])
@example(ops=[  # offline and back through every status set
    ("register", IDS[0], _body("A100"), "maintenance"),
    ("status", IDS[0], None, "offline"),
    ("heartbeat", IDS[0], None, None),
    ("status", IDS[0], None, "error"),
])
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operations, min_size=1, max_size=15))
def test_any_sequence_of_writes_leaves_indexes_equal_to_a_recomputation_from_the_hashes(
    registry: Registry, redis_db: redis.Redis, ops: list[tuple[str, str, Any, Any]]
) -> None:
    redis_db.flushall()
    for op in ops:
        apply(registry, op)
    keys = registry.store.keys
    assert stored(redis_db, keys) == recomputed(redis_db, keys)
    assert not redis_db.keys(f"{keys.tmp_prefix}*")  # no scratch key left behind


# ---- queries agree with a filter applied to the hashes one by one -----------------------------

filters = st.builds(
    Filters,
    gpu_model=st.sampled_from([None, None, "a1", "A100", "100", "rtx*", "Ü", "zzz"]),
    gpu_model_exact=st.sampled_from([None, None, None, "a100", "NVIDIA A1000", "A100:2"]),
    min_vram=st.sampled_from([None, None, 24576, 81920]),
    min_gpus=st.sampled_from([1, 1, 2, 3]),
    architecture=st.sampled_from([None, None, "amp", "ADA", "e"]),
    architecture_exact=st.sampled_from([None, None, "ampere"]),
    healthy_only=st.booleans(),
    statuses=st.sampled_from([(), ("idle",), ("busy", "error"), ("offline",)]),
    location=st.sampled_from([None, None, "eu-west", "US:EAST"]),
)
QUERY_IDS = [f"00000000-0000-4000-8000-0000000000{i:02d}" for i in range(12)]


def matches(fields: dict[str, str], f: Filters) -> bool:
    """Whether a provider passes `f`, decided from its hash alone (no lease lapses here)."""
    def gpu_passes(gpu: dict[str, Any]) -> bool:
        model, arch = fold_name(gpu["model_name"]), fold_name(gpu.get("architecture") or "")
        return (
            (f.gpu_model is None or fold_name(f.gpu_model) in model)
            and (f.gpu_model_exact is None or fold_name(f.gpu_model_exact) == model)
            and (f.architecture is None or (arch != "" and fold_name(f.architecture) in arch))
            and (f.architecture_exact is None or fold_name(f.architecture_exact) == arch)
            and gpu["vram_mb"] >= (f.min_vram or 0)
            and not (f.healthy_only and gpu.get("is_healthy") is False)
        )

    passing = sum(gpu_passes(gpu) for gpu in gpus_of(fields))
    location_ok = f.location is None or fold_name(f.location) == fold_name(fields.get("location") or "")
    status_ok = not f.statuses or fields["status"] in f.statuses
    return passing >= f.min_gpus and location_ok and status_ok


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    fleet=st.lists(st.tuples(details, st.sampled_from(LIVE_STATUSES)), min_size=1, max_size=12),
    f=filters,
)
def test_any_query_returns_exactly_the_providers_whose_gpus_pass_its_filters(
    registry: Registry, redis_db: redis.Redis, fleet: list[tuple[dict[str, Any], str]], f: Filters
) -> None:
    redis_db.flushall()
    for pid, (body, status) in zip(QUERY_IDS, fleet):
        registry.store.register(pid, body, status)
    expected = sorted(
        pid for pid in QUERY_IDS[: len(fleet)] if matches(redis_db.hgetall(registry.store.keys.provider(pid)), f)
    )
    page = registry.store.query(f, limit=100)
    assert [p.id for p in page.providers] == expected
    assert page.total == len(expected)
