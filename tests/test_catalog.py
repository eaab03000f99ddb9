"""GPU model and architecture filters: substrings as the original server matched them, exact
names on request, resolved through the catalog of known names rather than by reading providers."""
from __future__ import annotations

import pytest

from app.store.migrations import LAYOUT_VERSION, migrate

from .conftest import gpu


@pytest.fixture
def fleet(providers):
    """Providers named by what they hold."""
    return {
        "a100_80": providers.register(gpus=[gpu("NVIDIA A100 80GB PCIe", 81920, architecture="Ampere")])["id"],
        "a100_40": providers.register(gpus=[gpu("NVIDIA A100", 40960, architecture="Ampere")])["id"],
        "a1000": providers.register(gpus=[gpu("NVIDIA RTX A1000", 8192, architecture="Ampere")])["id"],
        "h100": providers.register(gpus=[gpu("NVIDIA H100", 81920, architecture="Hopper")])["id"],
        "mixed_a100s": providers.register(
            gpus=[gpu("NVIDIA A100", 40960, architecture="Ampere"),
                  gpu("NVIDIA A100 80GB PCIe", 81920, architecture="Ampere")]
        )["id"],
    }


def found(providers, fleet, query: str) -> set[str]:
    names = {pid: name for name, pid in fleet.items()}
    return {names[pid] for pid in providers.ids(query)}


def test_gpu_model_matches_a_case_insensitive_substring_of_any_gpus_model(providers, fleet):
    assert found(providers, fleet, "gpu_model=A100") == {"a100_80", "a100_40", "a1000", "mixed_a100s"}
    assert found(providers, fleet, "gpu_model=a100%2080gb") == {"a100_80", "mixed_a100s"}
    assert found(providers, fleet, "gpu_model=h1") == {"h100"}
    assert found(providers, fleet, "gpu_model=B200") == set()


def test_gpu_model_exact_matches_one_whole_model_name(providers, fleet):
    assert found(providers, fleet, "gpu_model_exact=nvidia%20a100") == {"a100_40", "mixed_a100s"}
    assert found(providers, fleet, "gpu_model_exact=A100") == set()


def test_substring_and_exact_together_must_both_hold_for_the_same_gpu(providers, fleet):
    assert found(providers, fleet, "gpu_model=80gb&gpu_model_exact=nvidia%20a100") == set()
    assert found(providers, fleet, "gpu_model=a100&gpu_model_exact=nvidia%20a100") == {"a100_40", "mixed_a100s"}


def test_architecture_matches_a_substring_and_exactly_on_request(providers, fleet):
    assert found(providers, fleet, "architecture=amp") == {"a100_80", "a100_40", "a1000", "mixed_a100s"}
    assert found(providers, fleet, "architecture=PER") == set(fleet)  # amPERe and hopPER
    assert found(providers, fleet, "architecture=HOP") == {"h100"}
    assert found(providers, fleet, "architecture_exact=amp") == set()
    assert found(providers, fleet, "architecture_exact=HOPPER") == {"h100"}


def test_gpus_of_several_matching_models_count_together_toward_min_gpus(providers, fleet):
    # Two A100s of different models: in no single model's "at least 2" index.
    assert found(providers, fleet, "gpu_model=a100&min_gpus=2") == {"mixed_a100s"}
    assert found(providers, fleet, "gpu_model=a100&min_gpus=2&min_vram=40960") == {"mixed_a100s"}
    assert found(providers, fleet, "gpu_model=a100&min_gpus=2&min_vram=81920") == set()
    assert found(providers, fleet, "gpu_model=a100&min_gpus=2&location=nowhere") == set()


def test_combined_filters_with_substrings(providers, fleet):
    query = "gpu_model=a100&architecture=amp&min_vram=40000&status=idle"
    assert found(providers, fleet, query) == {"a100_80", "a100_40", "mixed_a100s"}
    providers.heartbeat(fleet["a100_40"], status="busy")
    assert found(providers, fleet, query) == {"a100_80", "mixed_a100s"}
    assert found(providers, fleet, query.replace("idle", "busy")) == {"a100_40"}


def test_total_count_of_a_substring_query_counts_each_provider_once(client, fleet):
    response = client.get("/providers?gpu_model=a100&limit=1")
    assert response.headers["X-Total-Count"] == "4"


def test_claims_take_the_same_substring_and_exact_filters(client, fleet):
    exact = client.post("/providers/claim", json={"gpu_model_exact": "nvidia a100", "count": 2})
    assert exact.status_code == 200, exact.get_json()
    assert {p["id"] for p in exact.get_json()["providers"]} == {fleet["a100_40"], fleet["mixed_a100s"]}
    spanning = client.post("/providers/claim", json={"gpu_model": "A100", "min_gpus": 2})
    assert spanning.status_code == 409  # the only provider with two A100s is claimed already
    rest = client.post("/providers/claim", json={"gpu_model": "a100", "architecture": "amp", "count": 2})
    assert rest.status_code == 200
    assert {p["id"] for p in rest.get_json()["providers"]} == {fleet["a100_80"], fleet["a1000"]}


# ---- the catalog follows the fleet -------------------------------------------------------------

def catalog(redis_db, kind: str) -> dict[str, str]:
    return redis_db.hgetall(f"registry:catalog:{kind}")


def test_registration_adds_its_models_and_architectures_to_the_catalog(providers, redis_db):
    providers.register(gpus=[gpu("NVIDIA  A100", architecture="Ampere"), gpu("L4", 24576)])
    assert catalog(redis_db, "gpu") == {"nvidia+a100": "nvidia a100", "l4": "l4"}
    assert catalog(redis_db, "arch") == {"ampere": "ampere"}


def test_reregistration_with_other_gpus_moves_the_catalog_with_it(providers, redis_db):
    first = providers.register(gpus=[gpu("NVIDIA A100", architecture="Ampere")])
    providers.register(id=first["id"], gpus=[gpu("NVIDIA H100", architecture="Hopper")])
    assert catalog(redis_db, "gpu") == {"nvidia+h100": "nvidia h100"}
    assert catalog(redis_db, "arch") == {"hopper": "hopper"}
    assert providers.ids("gpu_model=a100") == []
    assert providers.ids("gpu_model=h100") == [first["id"]]


def test_a_model_leaves_the_catalog_with_its_last_provider_only(providers, client, redis_db):
    first = providers.register(gpus=[gpu("NVIDIA A100", 40960, architecture="Ampere")])
    second = providers.register(gpus=[gpu("nvidia a100", 81920, architecture="AMPERE")])
    assert client.delete(f"/providers/{first['id']}").status_code == 204
    assert catalog(redis_db, "gpu") == {"nvidia+a100": "nvidia a100"}
    assert catalog(redis_db, "arch") == {"ampere": "ampere"}
    assert client.delete(f"/providers/{second['id']}").status_code == 204
    assert catalog(redis_db, "gpu") == {} and catalog(redis_db, "arch") == {}


def test_status_changes_leave_the_catalog_as_it_is(providers, redis_db):
    body = providers.register(gpus=[gpu("NVIDIA A100", architecture="Ampere")])
    for status in ("busy", "offline", "maintenance", "idle"):
        providers.heartbeat(body["id"], status=status)
        assert catalog(redis_db, "gpu") == {"nvidia+a100": "nvidia a100"}
    assert providers.ids("gpu_model=a100") == [body["id"]]


def test_names_with_key_characters_are_catalogued_by_their_folded_name(providers, redis_db):
    body = providers.register(gpus=[gpu("RTX*4090 São:2", architecture="Ada Lovelace")])
    assert catalog(redis_db, "gpu") == {"rtx%2A4090+s%C3%A3o%3A2": "rtx*4090 são:2"}
    assert providers.ids("gpu_model=s%C3%A3o%3A") == [body["id"]]
    assert providers.ids("architecture=ada%20LOVE") == [body["id"]]


def test_a_restore_rebuilds_the_catalog(providers, registry, redis_db):
    providers.register(gpus=[gpu("NVIDIA A100", architecture="Ampere")])
    providers.register(gpus=[gpu("NVIDIA H100", architecture="Hopper"), gpu("L4", 24576)])
    before = catalog(redis_db, "gpu"), catalog(redis_db, "arch")
    now, hashes = registry.store.read_hashes(registry.store.provider_ids())
    redis_db.flushall()
    assert registry.store.restore(hashes, now) == 2
    assert (catalog(redis_db, "gpu"), catalog(redis_db, "arch")) == before
    assert len(providers.ids("gpu_model=a100&status=offline")) == 1


def test_a_store_of_layout_1_gets_its_catalogs_from_the_migration(providers, registry, redis_db):
    for i in range(5):
        providers.register(gpus=[gpu(f"NVIDIA A{i}00", architecture="Ampere"), gpu("L4", 24576)])
    expected = catalog(redis_db, "gpu"), catalog(redis_db, "arch")
    # What version 1 left: no catalogs and no layout key.
    redis_db.delete("registry:catalog:gpu", "registry:catalog:arch", "registry:layout")
    assert providers.ids("gpu_model=l4") == []
    assert migrate(registry.store) == 1
    assert (catalog(redis_db, "gpu"), catalog(redis_db, "arch")) == expected
    assert redis_db.get("registry:layout") == str(LAYOUT_VERSION)
    assert len(providers.ids("gpu_model=l4")) == 5
    assert migrate(registry.store) == LAYOUT_VERSION  # once only


def test_an_empty_store_starts_at_the_current_layout(registry, redis_db):
    assert migrate(registry.store) == LAYOUT_VERSION
    assert redis_db.get("registry:layout") == str(LAYOUT_VERSION)
