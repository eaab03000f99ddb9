"""Queries: every filter alone and combined, pagination, and parameter checking."""
from __future__ import annotations

import random
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from app.api import providers as provider_routes

from .conftest import gpu, provider_body

STATUSES = ("idle", "busy", "maintenance", "error", "offline")


def register(providers, *gpus: dict[str, Any], **fields: Any) -> str:
    return providers.register(gpus=list(gpus) or [gpu()], **fields)["id"]


def lapse(redis_db, provider_id: str) -> None:
    """Move a provider's lease deadline into the past, as time passing would (no sweep)."""
    past = int(time.time() * 1000) - 1000
    redis_db.hset(f"registry:provider:{provider_id}", "lease_expires_at", past)
    redis_db.zadd("registry:leases", {provider_id: past})


# ---- GPU filters -----------------------------------------------------------------------------


def test_no_filter_lists_every_provider_in_ascending_id_order(providers):
    ids = [register(providers) for _ in range(5)]
    assert providers.ids() == sorted(ids)


def test_list_answers_a_json_array_of_providers(client, providers):
    first = providers.register()
    response = client.get("/providers")
    assert response.status_code == 200
    assert response.get_json() == [providers.get(first["id"])]


def test_gpu_model_is_case_insensitive(providers):
    a100 = register(providers, gpu("NVIDIA A100"))
    register(providers, gpu("NVIDIA H100"))
    for spelling in ("NVIDIA A100", "nvidia a100", "Nvidia  A100"):
        assert providers.ids(f"gpu_model={spelling}") == [a100]


def test_gpu_model_matches_a_provider_with_mixed_models(providers):
    mixed = register(providers, gpu("A100", 40960), gpu("H100", 81920))
    only_a = register(providers, gpu("A100", 40960))
    assert providers.ids("gpu_model=H100") == [mixed]
    assert providers.ids("gpu_model=A100") == sorted([mixed, only_a])


def test_min_vram_needs_a_gpu_with_at_least_that_much(providers):
    small = register(providers, gpu("A100", 40960))
    big = register(providers, gpu("A100", 81920))
    assert providers.ids("min_vram=40960") == sorted([small, big])
    assert providers.ids("min_vram=40961") == [big]
    assert providers.ids("min_vram=81921") == []


def test_min_vram_applies_to_gpus_of_the_model_asked(providers):
    # The big GPU is an H100: an A100 query with min_vram must not count it.
    mixed = register(providers, gpu("A100", 40960), gpu("H100", 81920))
    assert providers.ids("gpu_model=A100&min_vram=81920") == []
    assert providers.ids("gpu_model=H100&min_vram=81920") == [mixed]
    assert providers.ids("min_vram=81920") == [mixed]


def test_architecture_is_case_insensitive_and_per_gpu(providers):
    mixed = register(providers, gpu("A100", architecture="Ampere"), gpu("H100", architecture="hopper"))
    ampere = register(providers, gpu("A100", architecture="ampere"))
    register(providers, gpu("L4"))
    assert providers.ids("architecture=AMPERE") == sorted([mixed, ampere])
    assert providers.ids("architecture=hopper") == [mixed]
    # The H100 is hopper, not ampere: no GPU of this provider is both.
    assert providers.ids("gpu_model=H100&architecture=ampere") == []
    assert providers.ids("gpu_model=A100&architecture=ampere") == sorted([mixed, ampere])


def test_healthy_only_ignores_unhealthy_gpus(providers):
    healthy = register(providers, gpu("A100"))
    sick = register(providers, gpu("A100", is_healthy=False))
    half = register(providers, gpu("A100", is_healthy=False), gpu("H100"))
    assert providers.ids() == sorted([healthy, sick, half])
    assert providers.ids("healthy_only=true") == sorted([healthy, half])
    assert providers.ids("healthy_only=false") == sorted([healthy, sick, half])
    assert providers.ids("healthy_only=true&gpu_model=A100") == [healthy]
    assert providers.ids("healthy_only=true&gpu_model=H100") == [half]


def test_min_gpus_counts_gpus_passing_every_gpu_filter(providers):
    two_a100 = register(providers, gpu("A100", 81920), gpu("A100", 40960))
    one_each = register(providers, gpu("A100", 81920), gpu("H100", 81920))
    two_sick = register(providers, gpu("A100", 81920), gpu("A100", 81920, is_healthy=False))
    assert providers.ids("min_gpus=2") == sorted([two_a100, one_each, two_sick])
    assert providers.ids("min_gpus=2&gpu_model=A100") == sorted([two_a100, two_sick])
    assert providers.ids("min_gpus=2&gpu_model=A100&min_vram=81920") == [two_sick]
    assert providers.ids("min_gpus=2&min_vram=81920") == sorted([one_each, two_sick])
    assert providers.ids("min_gpus=2&gpu_model=A100&healthy_only=true") == [two_a100]
    assert providers.ids("min_gpus=3") == []


def test_min_gpus_with_architecture_counts_gpus_of_that_architecture(providers):
    mixed = register(
        providers, gpu("A100", architecture="ampere"), gpu("A100", architecture="ampere"),
        gpu("A100", architecture="hopper"),
    )
    assert providers.ids("architecture=ampere&min_gpus=2") == [mixed]
    assert providers.ids("architecture=hopper&min_gpus=2") == []


# ---- provider filters ------------------------------------------------------------------------


def test_status_filter_takes_one_status(providers):
    idle = register(providers)
    busy = register(providers, status="busy")
    assert providers.ids("status=idle") == [idle]
    assert providers.ids("status=busy") == [busy]
    assert providers.ids("status=error") == []


def test_status_filter_takes_a_comma_list_or_repeats(providers):
    idle = register(providers)
    busy = register(providers, status="busy")
    register(providers, status="maintenance")
    assert providers.ids("status=idle,busy") == sorted([idle, busy])
    assert providers.ids("status=idle&status=busy") == sorted([idle, busy])
    assert providers.ids("status=idle,idle") == [idle]


def test_status_filter_uses_the_effective_status(providers, redis_db):
    lapsed = register(providers, status="busy")
    live = register(providers, status="busy")
    lapse(redis_db, lapsed)
    assert providers.ids("status=busy") == [live]
    assert providers.ids("status=offline") == [lapsed]
    assert providers.ids("status=busy,offline") == sorted([lapsed, live])
    assert providers.ids() == sorted([lapsed, live])


def test_location_is_case_insensitive(providers):
    west = register(providers, location="EU-West")
    register(providers, location="us-east")
    for spelling in ("eu-west", "EU-WEST", "Eu-West"):
        assert providers.ids(f"location={spelling}") == [west]


def test_location_filter_never_matches_a_prefix_or_another_place(providers):
    west = register(providers, location="EU-West")
    west2 = register(providers, location="eu-west-2")
    nowhere = register(providers, location=None)
    assert providers.ids("location=eu-west") == [west]
    assert providers.ids("location=EU-WEST-2") == [west2]
    assert providers.ids("location=eu") == []
    assert nowhere in providers.ids()


def test_every_filter_combined(providers, redis_db):
    match = register(
        providers, gpu("A100", 81920, architecture="ampere"), gpu("A100", 81920, architecture="ampere"),
        status="idle", location="us-east",
    )
    # Each of these fails exactly one filter.
    register(providers, gpu("A100", 81920, architecture="ampere"), gpu("A100", 81920, architecture="ampere"), status="busy", location="us-east")
    register(providers, gpu("A100", 81920, architecture="ampere"), gpu("A100", 81920, architecture="ampere"), location="eu-west")
    register(providers, gpu("A100", 81920, architecture="ampere"), gpu("A100", 40960, architecture="ampere"), location="us-east")
    register(providers, gpu("A100", 81920, architecture="ampere"), gpu("A100", 81920, architecture="hopper"), location="us-east")
    register(providers, gpu("A100", 81920, architecture="ampere"), gpu("A100", 81920, architecture="ampere", is_healthy=False), location="us-east")
    register(providers, gpu("A100", 81920, architecture="ampere"), gpu("H100", 81920, architecture="ampere"), location="us-east")
    register(providers, gpu("A100", 81920, architecture="ampere"), location="us-east")
    lapsed = register(providers, gpu("A100", 81920, architecture="ampere"), gpu("A100", 81920, architecture="ampere"), location="us-east")
    lapse(redis_db, lapsed)

    query = (
        "gpu_model=a100&min_vram=81920&architecture=Ampere&healthy_only=true&min_gpus=2"
        "&status=idle&location=US-East"
    )
    assert providers.ids(query) == [match]


# ---- pagination ------------------------------------------------------------------------------


def test_limit_pages_with_link_next_and_total_count(client, providers):
    ids = sorted(register(providers) for _ in range(5))

    first = client.get("/providers?limit=2")
    assert [p["id"] for p in first.get_json()] == ids[:2]
    assert first.headers["X-Total-Count"] == "5"
    link = first.headers["Link"]
    assert link.startswith("</providers?") and link.endswith('>; rel="next"')
    url = link[1 : link.index(">")]
    assert parse_qs(urlsplit(url).query) == {"limit": ["2"], "cursor": [ids[1]]}

    second = client.get(url)
    assert [p["id"] for p in second.get_json()] == ids[2:4]
    assert second.headers["X-Total-Count"] == "5"
    third = client.get(second.headers["Link"][1 : second.headers["Link"].index(">")])
    assert [p["id"] for p in third.get_json()] == ids[4:]
    assert "Link" not in third.headers


def test_last_full_page_has_no_next_link(client, providers):
    for _ in range(2):
        register(providers)
    response = client.get("/providers?limit=2")
    assert len(response.get_json()) == 2
    assert "Link" not in response.headers


def test_next_link_keeps_the_filters_and_the_prefix(client, providers):
    for _ in range(3):
        register(providers, status="busy")
    register(providers)
    response = client.get("/api/v1/providers?status=busy&limit=1&gpu_model=NVIDIA+A100")
    url = response.headers["Link"][1 : response.headers["Link"].index(">")]
    assert url.startswith("/api/v1/providers?")
    query = parse_qs(urlsplit(url).query)
    assert query["status"] == ["busy"] and query["gpu_model"] == ["NVIDIA A100"]
    assert response.headers["X-Total-Count"] == "3"
    assert len(providers.ids("status=busy&limit=1")) == 3


def test_total_count_is_of_every_match_not_of_the_page(client, providers):
    for _ in range(4):
        register(providers, gpu("H100"))
    register(providers, gpu("L4"))
    response = client.get("/providers?gpu_model=h100&limit=1")
    assert response.headers["X-Total-Count"] == "4"
    assert len(response.get_json()) == 1


def test_without_limit_every_match_comes_in_one_array_without_link(client, providers):
    ids = sorted(register(providers) for _ in range(101))
    response = client.get("/providers")
    assert [p["id"] for p in response.get_json()] == ids
    assert "Link" not in response.headers
    assert response.headers["X-Total-Count"] == "101"


@pytest.mark.parametrize("sort", ["id", "-vram", "last_seen"])
def test_a_listing_without_limit_reads_redis_in_chunks_and_never_repeats_or_skips(
    client, providers, monkeypatch, sort
):
    monkeypatch.setattr(provider_routes, "STREAM_CHUNK", 3)
    for i in range(10):
        register(providers, gpu("A100", 40960 + i % 4))
    paged = providers.ids(f"sort={sort}&limit=3")
    response = client.get(f"/providers?sort={sort}")
    assert [p["id"] for p in response.get_json()] == paged
    filtered = client.get("/providers?min_vram=40962&status=idle")
    assert len(filtered.get_json()) == 4 == int(filtered.headers["X-Total-Count"])
    assert client.get("/providers?gpu_model=h100").get_json() == []


def test_the_schedulers_plain_list_returns_the_whole_fleet_of_10000(client, registry, redis_db):
    store, ids = registry.store, []
    for start in range(0, 10_000, 500):
        pipe = redis_db.pipeline(transaction=False)
        for i in range(start, start + 500):
            ids.append(f"00000000-0000-4000-8000-{i:012d}")
            details = provider_body(name=f"rig-{i}", gpus=[gpu("NVIDIA A100", 81920, temperature_c=40)])
            store.run_script(store._write, [], store.register_args(ids[-1], details, "idle"), client=pipe)
        pipe.execute()
    response = client.get("/providers")
    assert response.status_code == 200 and response.headers["X-Total-Count"] == "10000"
    listed = response.get_json()
    assert [p["id"] for p in listed] == ids
    assert all(type(p["gpus"][0]["temperature_c"]) is int for p in listed)


@pytest.mark.parametrize("limit", ["1", "1000"])
def test_limit_bounds_are_accepted(client, limit):
    assert client.get(f"/providers?limit={limit}").status_code == 200


def test_cursor_of_a_deleted_provider_still_continues_after_it(client, providers):
    ids = sorted(register(providers) for _ in range(4))
    response = client.get("/providers?limit=2")
    client.delete(f"/providers/{ids[1]}")
    url = response.headers["Link"][1 : response.headers["Link"].index(">")]
    assert [p["id"] for p in client.get(url).get_json()] == ids[2:]


def test_paging_never_skips_or_repeats_while_providers_come_and_go(client, providers):
    rng = random.Random(7)
    present = {register(providers) for _ in range(30)}
    stable = set(present)  # providers that stay for the whole walk
    seen: list[str] = []
    url = "/providers?limit=4"
    for _ in range(100):
        response = client.get(url)
        seen += [p["id"] for p in response.get_json()]
        # Between pages: some join, some leave (never a stable one).
        for _ in range(2):
            present.add(register(providers))
        leaving = rng.sample(sorted(present - stable), k=min(2, len(present - stable)))
        for provider_id in leaving:
            assert client.delete(f"/providers/{provider_id}").status_code == 204
            present.discard(provider_id)
        link = response.headers.get("Link")
        if not link:
            break
        url = link[1 : link.index(">")]
    else:
        pytest.fail("paging did not end")
    assert len(seen) == len(set(seen)), "a provider was repeated"
    assert seen == sorted(seen), "pages are not in ascending ID order"
    assert stable <= set(seen), "a provider present throughout was skipped"


def test_paging_with_a_status_filter_across_lapsed_leases(providers, redis_db):
    ids = sorted(register(providers, status="busy") for _ in range(9))
    for provider_id in ids[::3]:
        lapse(redis_db, provider_id)
    assert providers.ids("status=busy&limit=2") == [i for i in ids if i not in ids[::3]]
    assert providers.ids("status=offline&limit=2") == ids[::3]
    assert providers.ids("status=offline,busy&limit=2") == ids


# ---- bad parameters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, field",
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("limit=1.5", "limit"),
        ("min_vram=0", "min_vram"),
        ("min_vram=4194305", "min_vram"),
        ("min_vram=big", "min_vram"),
        ("min_gpus=0", "min_gpus"),
        ("min_gpus=65", "min_gpus"),
        ("min_gpus=two", "min_gpus"),
        ("healthy_only=maybe", "healthy_only"),
        ("status=sleeping", "status"),
        ("status=idle,,busy", "status"),
        ("status=", "status"),
        ("gpu_model=", "gpu_model"),
        ("location=", "location"),
        ("architecture=", "architecture"),
        ("cursor=not-a-uuid", "cursor"),
        ("limit=1&limit=2", "limit"),
        ("gpu_model=A100&gpu_model=H100", "gpu_model"),
        ("color=green", "color"),
        ("page=2", "page"),
    ],
)
def test_unknown_or_malformed_parameters_are_400(client, query, field):
    response = client.get(f"/providers?{query}")
    assert response.status_code == 400
    body = response.get_json()
    assert body["code"] == "validation_error"
    assert field in body["details"]


# ---- randomized: the query against a brute-force recomputation -------------------------------


def _canonical(name: str | None) -> str | None:
    return " ".join(name.split()).casefold() if name is not None else None


def brute_force(everyone: list[dict[str, Any]], params: dict[str, Any]) -> list[str]:
    """The IDs a query should return, computed from every provider's GET answer."""
    out = []
    for p in everyone:
        if "status" in params and p["status"] not in params["status"].split(","):
            continue
        if "location" in params and _canonical(p["location"]) != _canonical(params["location"]):
            continue
        passing = [
            g for g in p["gpus"]
            if ("gpu_model" not in params or _canonical(g["model_name"]) == _canonical(params["gpu_model"]))
            and ("min_vram" not in params or g["vram_mb"] >= params["min_vram"])
            and ("architecture" not in params
                 or _canonical(g.get("architecture")) == _canonical(params["architecture"]))
            and (not params.get("healthy_only") or g["is_healthy"])
        ]
        if len(passing) >= params.get("min_gpus", 1):
            out.append(p["id"])
    return sorted(out)


MODELS = ["A100", "a100", "H100", "RTX 4090", "L4"]
ARCHS = [None, "ampere", "Ampere", "hopper", "ada"]
VRAMS = [16384, 24576, 40960, 81920]
LOCATIONS = [None, "eu-west", "EU-West", "us-east"]


def _random_gpu(rng: random.Random) -> dict[str, Any]:
    fields: dict[str, Any] = {"is_healthy": rng.random() > 0.2}
    arch = rng.choice(ARCHS)
    if arch:
        fields["architecture"] = arch
    return gpu(rng.choice(MODELS), rng.choice(VRAMS), **fields)


def _random_params(rng: random.Random) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if rng.random() < 0.5:
        params["gpu_model"] = rng.choice(MODELS)
    if rng.random() < 0.4:
        params["min_vram"] = rng.choice(VRAMS) + rng.choice([0, 1, -1])
    if rng.random() < 0.3:
        params["architecture"] = rng.choice(ARCHS[1:])
    if rng.random() < 0.3:
        params["healthy_only"] = True
    if rng.random() < 0.4:
        params["min_gpus"] = rng.choice([1, 2, 3])
    if rng.random() < 0.5:
        params["status"] = ",".join(rng.sample(STATUSES, k=rng.choice([1, 1, 2, 3])))
    if rng.random() < 0.3:
        params["location"] = rng.choice(LOCATIONS[1:])
    return params


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_randomized_queries_agree_with_brute_force(client, providers, redis_db, seed):
    rng = random.Random(seed)
    ids = []
    for _ in range(60):
        body = {
            "gpus": [_random_gpu(rng) for _ in range(rng.choice([1, 1, 2, 3, 4]))],
            "location": rng.choice(LOCATIONS),
            "status": rng.choice(STATUSES[:4]),
        }
        ids.append(register(providers, *body["gpus"], location=body["location"], status=body["status"]))
    for provider_id in rng.sample(ids, 8):
        lapse(redis_db, provider_id)  # lapsed, not swept
    for provider_id in rng.sample(ids, 5):
        providers.heartbeat(provider_id, status="offline")
    everyone = [providers.get(provider_id) for provider_id in ids]

    answered = 0
    for _ in range(80):
        params = _random_params(rng)
        query = "&".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())
        expected = brute_force(everyone, params)
        limit = rng.choice([1, 3, 7, 100])
        first = client.get(f"/providers?{query}&limit={limit}")
        assert first.status_code == 200
        assert first.headers["X-Total-Count"] == str(len(expected)), (seed, query)
        assert providers.ids(f"{query}&limit={limit}") == expected, (seed, query)
        answered += bool(expected)
    assert answered > 20, "too few queries matched anything to test much"
