"""Sorted lists: vram, gpus and last_seen, either way, ties by ID, with exact paging."""
from __future__ import annotations

import random

import pytest

from .conftest import gpu


def all_pages(client, query: str, limit: int) -> list[dict]:
    rows, url = [], f"/providers?{query}&limit={limit}"
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.get_json()
        rows += response.get_json()
        link = response.headers.get("Link")
        url = link[1 : link.index(">")] if link else ""
    return rows


@pytest.fixture
def fleet(providers):
    rng = random.Random(7)
    fleet = []
    for i in range(23):
        gpus = [
            gpu(rng.choice(["NVIDIA A100", "RTX 4090"]), rng.choice([24576, 40960, 81920]), is_healthy=rng.random() > 0.2)
            for _ in range(rng.randint(1, 4))
        ]
        fleet.append(providers.register(name=f"rig-{i}", gpus=gpus))
    for p in rng.sample(fleet, 8):
        providers.heartbeat(p["id"])  # later last_seen for some
    return fleet


def expected(client, sort: str, gpu_model: str | None = None, min_vram: int = 0, healthy_only: bool = False) -> list[str]:
    """Recompute the order from every provider."""
    providers = {p["id"]: p for p in all_pages(client, "", 1000)}

    def passing(p):
        return [
            g["vram_mb"] for g in p["gpus"]
            if (gpu_model is None or g["model_name"].casefold() == gpu_model.casefold())
            and g["vram_mb"] >= min_vram and (not healthy_only or g["is_healthy"])
        ]

    field = sort.lstrip("-")
    rows = []
    for p in providers.values():
        vrams = passing(p)
        if not vrams:
            continue
        value = {"vram": max(vrams), "gpus": len(vrams), "last_seen": p["last_seen_at"]}[field]
        rows.append((value, p["id"]))
    rows.sort(key=lambda r: r[1])
    rows.sort(key=lambda r: r[0], reverse=sort.startswith("-"))
    return [provider_id for _, provider_id in rows]


@pytest.mark.parametrize("sort", ["vram", "-vram", "gpus", "-gpus", "last_seen", "-last_seen"])
def test_each_sort_orders_and_pages_exactly(client, fleet, sort):
    got = [p["id"] for p in all_pages(client, f"sort={sort}", 4)]
    assert got == expected(client, sort)
    assert len(got) == len(set(got)) == len(fleet)


@pytest.mark.parametrize("sort", ["vram", "-gpus"])
def test_sorts_count_only_gpus_that_pass_the_filters(client, fleet, sort):
    query = f"sort={sort}&gpu_model=nvidia%20a100&min_vram=40000&healthy_only=true"
    got = [p["id"] for p in all_pages(client, query, 3)]
    assert got == expected(client, sort, gpu_model="nvidia a100", min_vram=40000, healthy_only=True)


def test_default_order_is_ascending_id(client, fleet):
    got = [p["id"] for p in all_pages(client, "", 5)]
    assert got == sorted(p["id"] for p in fleet)
    assert [p["id"] for p in all_pages(client, "sort=id", 5)] == got


def test_a_cursor_from_another_sort_is_400(client, fleet):
    first = client.get("/providers?sort=vram&limit=2")
    cursor = first.headers["Link"].split("cursor=")[1].split(">")[0]
    assert client.get(f"/providers?cursor={cursor}").status_code == 400
    assert client.get(f"/providers?sort=vram&cursor={fleet[0]['id']}").status_code == 400
