"""The benchmark's own parts: arguments, the synthetic fleet, wrk plumbing, the summary.

The benchmark itself is not run here (`make bench` runs it); these check that what it loads is
what the API accepts and that its figures are computed as docs/PERFORMANCE.md says.
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from app.schemas import RegisterSchema

from .redis_server import RedisServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_api  # noqa: E402
import fleet  # noqa: E402
import loadgen  # noqa: E402


def test_default_run_measures_ten_and_a_hundred_thousand_providers() -> None:
    args = bench_api.parse_args([])
    assert args.sizes == [10_000, 100_000]
    assert args.rounds >= 3


def test_sizes_accept_k_suffix_and_come_out_sorted_without_duplicates() -> None:
    assert bench_api.parse_args(["--sizes", "100k,10000,10k"]).sizes == [10_000, 100_000]


@pytest.mark.parametrize("bad", ["0", "ten", "2000000", ","])
def test_impossible_sizes_are_rejected(bad: str) -> None:
    with pytest.raises(SystemExit):
        bench_api.parse_args(["--sizes", bad])


@pytest.mark.parametrize("option", ["--rounds", "--seconds", "--query-connections"])
def test_counts_and_durations_must_be_positive(option: str) -> None:
    with pytest.raises(SystemExit):
        bench_api.parse_args([option, "0"])


def test_query_is_the_selective_one_of_the_issue() -> None:
    path = bench_api.query_path(bench_api.parse_args(["--min-vram", "40000"]))
    assert path == "/providers?gpu_model=NVIDIA+A100&min_vram=40000&status=idle&limit=50"


def test_each_target_leads_one_round_in_turn() -> None:
    targets = ["floor", "heartbeat@10", "query@10"]
    firsts = [bench_api.rotation(targets, r)[0] for r in range(3)]
    assert sorted(firsts) == sorted(targets)
    assert all(sorted(bench_api.rotation(targets, r)) == sorted(targets) for r in range(5))


def _run(round_: int, target: str, rps: float = 0.0, p99: float = 0.0) -> bench_api.Run:
    return bench_api.Run(round=round_, target=target, rps=rps, p50_ms=p99 / 2, p99_ms=p99, errors=0, requests=1)


def test_ratios_are_taken_within_a_round_then_their_median() -> None:
    # The floor halves in round 1 (a noisy neighbour) and so do heartbeats: the ratio holds.
    runs = [
        _run(0, "floor", rps=4000), _run(0, "heartbeat@10", rps=2400),
        _run(1, "floor", rps=2000), _run(1, "heartbeat@10", rps=1200),
        _run(2, "floor", rps=4000), _run(2, "heartbeat@10", rps=1600),
        _run(0, "query@10", p99=10), _run(0, "query@100", p99=12),
        _run(1, "query@10", p99=20), _run(1, "query@100", p99=40),
        _run(2, "query@10", p99=10), _run(2, "query@100", p99=14),
    ]
    summary = bench_api.summarise(runs, [10, 100])
    heartbeat = summary["heartbeat_vs_floor"][10]
    assert heartbeat["median"] == pytest.approx(0.6)
    assert (heartbeat["min"], heartbeat["max"]) == (pytest.approx(0.4), pytest.approx(0.6))
    assert heartbeat["met"] is True
    growth = summary["query_p99_growth"]
    assert growth["median"] == pytest.approx(1.4)
    assert growth["met"] is True
    assert summary["targets"]["floor"]["rps"] == 4000


def test_missed_targets_are_reported_as_missed() -> None:
    runs = [
        _run(0, "floor", rps=4000), _run(0, "heartbeat@10", rps=1000),
        _run(0, "query@10", p99=10), _run(0, "query@100", p99=30),
    ]
    summary = bench_api.summarise(runs, [10, 100])
    assert summary["heartbeat_vs_floor"][10]["met"] is False
    assert summary["query_p99_growth"]["met"] is False


def test_query_pages_are_measured_against_the_floor_at_the_same_connections() -> None:
    runs = [
        _run(0, "floor", rps=4000), _run(0, "pages@10", rps=1200), _run(0, "pages@100", rps=800),
        _run(1, "floor", rps=2000), _run(1, "pages@10", rps=500), _run(1, "pages@100", rps=400),
    ]
    pages = bench_api.summarise(runs, [10, 100])["pages_vs_floor"]
    assert pages[10]["median"] == pytest.approx(0.275) and pages[10]["met"] is True
    assert pages[100]["median"] == pytest.approx(0.2) and pages[100]["met"] is False


def test_wrk_result_is_read_from_the_report_line() -> None:
    stdout = (
        "Running 5s test @ http://127.0.0.1:1/\n"
        'BENCH_RESULT {"requests":5000,"duration_us":2000000,"bytes":10,"status_errors":1,'
        '"socket_errors":2,"p50_us":900,"p90_us":1500,"p99_us":4000,"max_us":9000,"mean_us":1000.5}\n'
    )
    result = loadgen.parse_output(stdout)
    assert result.rps == 2500
    assert (result.p50_us, result.p99_us, result.errors) == (900, 4000, 3)


def test_wrk_output_without_a_report_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="BENCH_RESULT"):
        loadgen.parse_output("unable to connect to 127.0.0.1:1 Connection refused\n")


@pytest.mark.parametrize("url", ["http://10.0.0.5:8080/", "http://example.com/", "http://192.168.1.2/"])
def test_wrk_is_never_pointed_away_from_loopback(url: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        loadgen.wrk_command(url, "get.lua", seconds=1, threads=1, connections=1)


def test_fleet_is_reproducible_from_its_seed() -> None:
    assert fleet.member(7, 42) == fleet.member(7, 42)
    assert fleet.member(7, 42).id != fleet.member(8, 42).id


def test_fleet_members_are_registrations_the_api_accepts_unchanged() -> None:
    schema = RegisterSchema()
    for index in range(300):
        body = fleet.member(1, index).body
        assert schema.load(body) == body


def test_fleet_mixes_models_gpu_counts_and_statuses() -> None:
    members = [fleet.member(1, index) for index in range(3000)]
    statuses = collections.Counter(m.status for m in members)
    assert set(statuses) == {"idle", "busy", "maintenance", "error", "offline"}
    assert 0.4 < statuses["idle"] / len(members) < 0.6
    models = {gpu["model_name"] for m in members for gpu in m.body["gpus"]}
    assert len(models) >= 8
    counts = {len(m.body["gpus"]) for m in members}
    assert {1, 2, 4, 8} <= counts
    vram = {gpu["vram_mb"] for m in members for gpu in m.body["gpus"]}
    assert {24564, 40960, 81920} <= vram  # real products' sizes, not round numbers


def test_loaded_fleet_answers_queries_as_its_members_say(
    client: FlaskClient, redis_server: RedisServer
) -> None:
    loaded, _ = fleet.load(redis_server.url, 400, seed=3, processes=1)
    assert len(loaded) == 400
    members = [fleet.member(3, index) for index in range(400)]
    assert [(m.id, m.status) for m in members] == loaded

    expected = {
        m.id for m in members
        if m.status == "idle"
        and any(g["model_name"] == "NVIDIA A100" and g["vram_mb"] >= 80000 for g in m.body["gpus"])
    }
    response = client.get("/providers?gpu_model=NVIDIA A100&min_vram=80000&status=idle&limit=1000")
    assert response.status_code == 200
    assert {p["id"] for p in response.get_json()} == expected
    assert expected  # the query selects something, but not everything

    offline = [m for m in members if m.status == "offline"]
    response = client.get(f"/providers/{offline[0].id}")
    assert response.get_json()["status"] == "offline"


def test_report_says_which_targets_are_met_and_how_it_was_served() -> None:
    runs = [
        _run(0, "floor", rps=4000), _run(0, "heartbeat@10", rps=2400), _run(0, "heartbeat@100", rps=1000),
        _run(0, "query@10", p99=10), _run(0, "query@100", p99=30),
    ]
    summary = bench_api.summarise(runs, [10, 100])
    summary["rounds_done"] = 1
    memory = {
        "provider_hash_bytes_median": 2400, "index_bytes_per_provider": 1800,
        "used_memory_per_provider": 5300, "other_bytes_per_provider_by_kind": {"gpu": 500},
    }
    report = {
        "machine": {
            "nproc": 2, "cpu": "AMD EPYC", "memory_gib": 23.5, "kernel": "6", "python": "3.11.7",
            "redis": "7.0.15", "wrk": "4.1.0", "packages": {"flask": "3.1.3"},
            "loadavg_start": (1.0, 1.0, 1.0), "loadavg_end": (2.0, 2.0, 2.0),
        },
        "summary": summary,
        "args": vars(bench_api.parse_args(["--sizes", "10,100"])),
        "query": "/providers?limit=50",
        "serving": {"worker_class": "gevent", "workers": 2, "threads": 8},
        "fleets": {n: {"load_seconds": 1.0, "query_total": 5, "memory": memory} for n in (10, 100)},
    }
    text = bench_api.render(report)
    assert "worker class gevent, 2 workers." in text
    assert "Heartbeats at 10 / floor: median 0.60 (rounds 0.60–0.60); target ≥ 0.6: met." in text
    assert "Heartbeats at 100 / floor: median 0.25 (rounds 0.25–0.25); target ≥ 0.6: NOT met." in text
    assert "Query p99 at 100 / at 10: median 3.00" in text and "target ≤ 1.5: NOT met." in text
    assert "| floor | 4000 |" in text


def test_redis_cost_counts_a_script_call_once_and_the_commands_clients_sent() -> None:
    # One heartbeat: the FCALL, and what it ran (GET of the pulse inside, and one GET a client sent).
    stats = {"fcall": (10, 120), "get": (20, 20), "hmget": (10, 30), "config|resetstat": (1, 5)}
    shares = {"fcall": 1.0, "get": 0.5, "hmget": 0.0}
    us, trips = bench_api.redis_cost(stats, shares, 10)
    assert (us, trips) == (13.0, 2.0)


def test_fleet_per_redis_core_follows_redis_time_per_heartbeat() -> None:
    runs = [_run(0, "floor", rps=4000), _run(0, "heartbeat@10", rps=2400)]
    runs[1].redis_us_per_request, runs[1].round_trips_per_request = 10.0, 1.0
    row = bench_api.summarise(runs, [10])["heartbeat_vs_floor"][10]
    assert row["fleet_per_redis_core"] == 1_000_000 and row["round_trips"] == 1.0
