"""A synthetic, reproducible fleet of providers, and a parallel loader through ProviderStore."""
from __future__ import annotations

import multiprocessing
import random
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any

from app.config import Settings
from app.keyring import hash_secret
from app.registry import redis_client
from app.schemas import RegisterSchema
from app.store import Keys, ProviderStore


@dataclass(frozen=True)
class GpuKind:
    """One GPU product as a daemon reports it (nvidia-smi / rocm-smi names, real VRAM)."""

    model_name: str
    vram_mb: int
    architecture: str
    compute_capability: str | None
    cuda_cores: int
    tensor_cores: int
    memory_bandwidth_gb_s: int
    power_consumption_w: int
    datacenter: bool
    weight: int


# Weights are the share of rigs whose main GPU is of this kind; consumer cards dominate.
CATALOGUE: tuple[GpuKind, ...] = (
    GpuKind("NVIDIA GeForce RTX 4090", 24564, "ada lovelace", "8.9", 16384, 512, 1008, 450, False, 20),
    GpuKind("NVIDIA GeForce RTX 3090", 24576, "ampere", "8.6", 10496, 328, 936, 350, False, 14),
    GpuKind("NVIDIA GeForce RTX 3080", 10240, "ampere", "8.6", 8704, 272, 760, 320, False, 6),
    GpuKind("NVIDIA H100", 81559, "hopper", "9.0", 16896, 528, 3350, 700, True, 10),
    GpuKind("NVIDIA A100", 81920, "ampere", "8.0", 6912, 432, 2039, 400, True, 8),
    GpuKind("NVIDIA A100", 40960, "ampere", "8.0", 6912, 432, 1555, 400, True, 6),
    GpuKind("NVIDIA L40S", 46068, "ada lovelace", "8.9", 18176, 568, 864, 350, True, 6),
    GpuKind("NVIDIA A10", 23028, "ampere", "8.6", 9216, 288, 600, 150, True, 8),
    GpuKind("Tesla T4", 15360, "turing", "7.5", 2560, 320, 320, 70, True, 10),
    GpuKind("Tesla V100", 32768, "volta", "7.0", 5120, 640, 900, 300, True, 5),
    GpuKind("Tesla V100", 16384, "volta", "7.0", 5120, 640, 900, 300, True, 3),
    GpuKind("AMD Instinct MI300X", 196608, "cdna3", None, 19456, 1216, 5300, 750, True, 4),
)
STATUS_WEIGHTS: dict[str, int] = {"idle": 50, "busy": 30, "maintenance": 5, "error": 3, "offline": 12}
CONSUMER_COUNTS = ((1, 60), (2, 30), (4, 10))
DATACENTER_COUNTS = ((1, 15), (2, 15), (4, 30), (8, 40))
LOCATIONS = (
    "us-east", "us-west", "us-central", "ca-central", "eu-west", "eu-central", "eu-north",
    "uk-south", "ap-northeast", "ap-southeast", "ap-south", "sa-east",
)
DRIVERS = ("535.161.08", "545.29.06", "550.54.15", "550.90.07", "560.35.03")
MIXED_SHARE = 0.03  # rigs with a second GPU model (irregular in the store)
UNHEALTHY_SHARE = 0.01  # rigs with one GPU reported unhealthy


@dataclass(frozen=True)
class Member:
    """A provider of the fleet: its ID, the status it holds, and its registration body."""

    id: str
    status: str
    body: dict[str, Any]


def _pick(rng: random.Random, weighted: tuple[tuple[Any, int], ...]) -> Any:
    return rng.choices([item for item, _ in weighted], [w for _, w in weighted])[0]


def _gpu(rng: random.Random, kind: GpuKind, driver: str) -> dict[str, Any]:
    gpu: dict[str, Any] = {
        "model_name": kind.model_name,
        "vram_mb": kind.vram_mb,
        "driver_version": driver,
        "architecture": kind.architecture,
        "cuda_cores": kind.cuda_cores,
        "tensor_cores": kind.tensor_cores,
        "memory_bandwidth_gb_s": kind.memory_bandwidth_gb_s,
        "power_consumption_w": kind.power_consumption_w,
        "utilization_gpu_percent": rng.randrange(0, 101),
        "utilization_memory_percent": rng.randrange(0, 101),
        "temperature_c": rng.randrange(30, 86),
        "power_draw_w": rng.randrange(20, kind.power_consumption_w + 1),
        "is_healthy": True,
    }
    if kind.compute_capability:
        gpu["compute_capability"] = kind.compute_capability
    return gpu


def member(seed: int, index: int) -> Member:
    """Return the fleet's `index`-th provider; the same seed and index give the same one."""
    rng = random.Random(f"{seed}:{index}")
    kinds = tuple((kind, kind.weight) for kind in CATALOGUE)
    kind: GpuKind = _pick(rng, kinds)
    count = _pick(rng, DATACENTER_COUNTS if kind.datacenter else CONSUMER_COUNTS)
    driver = rng.choice(DRIVERS)
    gpus = [_gpu(rng, kind, driver) for _ in range(count)]
    if rng.random() < MIXED_SHARE:
        gpus.append(_gpu(rng, _pick(rng, kinds), driver))
    if rng.random() < UNHEALTHY_SHARE:
        rng.choice(gpus)["is_healthy"] = False
    location = rng.choice(LOCATIONS)
    body = {
        "owner_id": f"owner-{rng.randrange(1, 2001):04d}",
        "name": f"rig-{index:06d}",
        "hostname": f"rig-{index:06d}.{location}.example.net",
        "ip_address": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        "location": location,
        "gpus": gpus,
        "metadata": {"rack": f"r{rng.randrange(1, 100)}", "daemon_version": "1.4.2"},
    }
    status = _pick(rng, tuple(STATUS_WEIGHTS.items()))
    return Member(id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), status=status, body=body)


def daemon_heartbeat(member: Member, index: int, at: str) -> dict[str, Any]:
    """The platform's Go daemon's heartbeat for a member, as it sends it every 15 s.

    Each GPU's live values in the daemon's own GPU struct: the static fields empty (Go's
    zero values), nvidia-smi's readings, the health the member registered with, and the
    daemon's own extra fields (docs/GO_CLIENTS.md).
    """
    rng = random.Random(f"daemon:{index}")
    gpus = []
    for gpu in member.body["gpus"]:
        load = rng.randrange(101)
        gpus.append({
            "model_name": "", "vram_mb": 0, "driver_version": "", "architecture": "",
            "compute_capability": "", "cuda_cores": 0, "tensor_cores": 0, "memory_bandwidth_gb_s": 0,
            "power_consumption_w": 0, "utilization_gpu_percent": load,
            "utilization_memory_percent": rng.randrange(101), "temperature_celsius": 35 + load // 2,
            "power_draw_w": 60 + 3 * load, "is_healthy": gpu.get("is_healthy", True),
            "is_available": True, "last_check_at": at,
        })
    return {"provider_id": member.id, "status": "online", "timestamp": at, "gpu_metrics": gpus}


def token_for(seed: int, index: int) -> str:
    """Return the provider token of the fleet's `index`-th provider (the bench's daemons send it)."""
    return f"bench-token-{seed}-{index:07d}"


@dataclass(frozen=True)
class _Chunk:
    redis_url: str
    key_prefix: str
    lease_ttl_s: float
    seed: int
    start: int
    stop: int
    tokens: bool = False


def _load_chunk(job: _Chunk) -> list[tuple[str, str]]:
    """Register providers start..stop-1 through the store; offline ones then sign off."""
    settings = Settings(redis_url=job.redis_url, key_prefix=job.key_prefix, redis_timeout_s=10)
    client = redis_client(settings)
    store = ProviderStore(client, Keys(job.key_prefix), lease_ttl_s=job.lease_ttl_s)
    schema = RegisterSchema()
    loaded = []
    try:
        for index in range(job.start, job.stop):
            m = member(job.seed, index)
            if index == job.start:
                # The bodies are what the API would hand the store: check one per chunk (the
                # schema costs half as much again as the registration itself).
                if schema.load(m.body) != m.body:
                    raise ValueError(f"fleet member {index} changes under RegisterSchema")
            token_hash = hash_secret(token_for(job.seed, index)) if job.tokens else ""
            store.register(m.id, m.body, "idle" if m.status == "offline" else m.status, token_hash)
            if m.status == "offline":
                store.heartbeat(m.id, "offline")
            loaded.append((m.id, m.status))
    finally:
        client.close()
    return loaded


def _default_signals() -> None:
    # A worker inherits the bench's handlers; the pool ends its workers with SIGTERM.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def load(
    redis_url: str,
    n: int,
    *,
    seed: int = 1,
    key_prefix: str = "registry:",
    processes: int = 4,
    lease_ttl_s: float = 86400.0,
    timeout_s: float | None = None,
    tokens: bool = False,
) -> tuple[list[tuple[str, str]], float]:
    """Register providers 0..n-1 of the fleet in parallel processes.

    With `tokens`, provider i holds the token `token_for(seed, i)`, as a daemon holds its own.

    Returns:
        The (id, status) of every provider loaded, in index order, and the seconds it took.
    Raises:
        TimeoutError: the load did not finish within `timeout_s` (default: 15 minutes, or 200
            providers a second for a larger fleet, a shared 2-core machine's worst case).
    """
    if timeout_s is None:
        timeout_s = max(900.0, n / 200)
    chunk = max(1, min(2000, -(-n // processes)))
    jobs = [
        _Chunk(redis_url, key_prefix, lease_ttl_s, seed, start, min(n, start + chunk), tokens)
        for start in range(0, n, chunk)
    ]
    started = time.monotonic()
    loaded: list[tuple[str, str]] = []
    if processes == 1:
        for job in jobs:
            loaded += _load_chunk(job)
        return loaded, time.monotonic() - started
    with multiprocessing.get_context("fork").Pool(processes, initializer=_default_signals) as pool:
        result = pool.map_async(_load_chunk, jobs)
        for part in result.get(timeout=timeout_s):
            loaded += part
    return loaded, time.monotonic() - started
