"""The provider store: every read and write of providers, each one round trip to Redis."""
from __future__ import annotations

import functools
import json
import logging
from collections import defaultdict
from importlib import resources
from typing import Any, Callable, TypeVar

import redis

from ..errors import ProviderNotFound, StoreUnavailable
from ..models import DETAIL_FIELDS, Filters, Page, Provider, Transition
from .keys import STATUSES, Keys, canonical_name

log = logging.getLogger(__name__)

# Live GPU fields a heartbeat may update; the rest of a GPU changes only with its details.
LIVE_GPU_FIELDS = (
    "utilization_gpu_percent",
    "utilization_memory_percent",
    "temperature_c",
    "power_draw_w",
    "is_healthy",
)

F = TypeVar("F", bound=Callable[..., Any])


def _wrap_errors(method: F) -> F:
    """Turn any Redis failure into StoreUnavailable, at the store's edge."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("redis unavailable", extra={"error": str(exc)})
            raise StoreUnavailable() from exc
        except redis.RedisError as exc:
            log.error("redis error", extra={"error": str(exc)}, exc_info=True)
            raise StoreUnavailable(f"the registry's store failed: {exc}") from exc

    return wrapper  # type: ignore[return-value]


def _load_script(name: str) -> str:
    lua = resources.files(__package__).joinpath("lua")
    return lua.joinpath("lib.lua").read_text() + lua.joinpath(f"{name}.lua").read_text()


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2]))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def gpu_token(gpu: dict[str, Any]) -> str:
    """Return the canonical "model|architecture" token of a GPU, as scripts compare them."""
    return f"{canonical_name(gpu['model_name'])}|{canonical_name(gpu.get('architecture') or '')}"


def index_entries(keys: Keys, details: dict[str, Any]) -> list[tuple[str, float]]:
    """Return the (index key, score) pairs that a provider with these details belongs to.

    For each model, the provider is in `gpu:<model>:<k>` for k = 1..(its GPUs of that model),
    scored by the k-th largest VRAM of them: "at least k GPUs of model M with VRAM >= v" is
    then one score range. `gpus:<k>` does the same across models.
    """
    vram_by_model: dict[str, list[int]] = defaultdict(list)
    all_vram: list[int] = []
    archs: set[str] = set()
    for gpu in details["gpus"]:
        vram_by_model[gpu["model_name"]].append(gpu["vram_mb"])
        all_vram.append(gpu["vram_mb"])
        if gpu.get("architecture"):
            archs.add(keys.architecture(gpu["architecture"]))

    entries: dict[str, float] = {}
    # Models that differ only in case or spacing share one index: merge them first.
    merged: dict[str, list[int]] = defaultdict(list)
    for model, vrams in vram_by_model.items():
        merged[keys.gpu_model(model, 1).rsplit(":", 1)[0]].extend(vrams)
    for stem, vrams in merged.items():
        for k, vram in enumerate(sorted(vrams, reverse=True), start=1):
            entries[f"{stem}:{k}"] = vram
    for k, vram in enumerate(sorted(all_vram, reverse=True), start=1):
        entries[keys.gpu_any(k)] = vram
    for key in archs:
        entries[key] = 0
    if details.get("location"):
        entries[keys.location(details["location"])] = 0
    return list(entries.items())


class ProviderStore:
    """Providers, their leases and their indexes in Redis."""

    def __init__(self, client: redis.Redis, keys: Keys, lease_ttl_s: float) -> None:
        self.redis = client
        self.keys = keys
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self._write = client.register_script(_load_script("write"))
        self._heartbeat = client.register_script(_load_script("heartbeat"))
        self._delete = client.register_script(_load_script("delete"))
        self._sweep = client.register_script(_load_script("sweep"))
        self._query = client.register_script(_load_script("query"))

    def _status_prefix(self) -> str:
        return self.keys.status("")

    def _detail_args(self, details: dict[str, Any]) -> list[Any]:
        fields: list[Any] = []
        for name in DETAIL_FIELDS:
            if details.get(name) is not None:
                fields += [name, details[name]]
        fields += [
            "gpus", _dumps(details["gpus"]),
            "metadata", _dumps(details.get("metadata") or {}),
            "gpu_keys", " ".join(gpu_token(gpu) for gpu in details["gpus"]),
        ]
        args: list[Any] = [len(fields) // 2, *fields]
        for key, score in index_entries(self.keys, details):
            args += [key, score]
        return args

    def _write_keys(self, provider_id: str) -> list[str]:
        k = self.keys
        return [k.provider(provider_id), k.lease(provider_id), k.leases, k.providers, k.irregular]

    @_wrap_errors
    def register(self, provider_id: str, details: dict[str, Any], status: str) -> tuple[Provider, bool, int]:
        """Create or replace a provider and start its lease.

        Returns:
            The provider, whether it was created, and the server time in ms.
        """
        args = [provider_id, "register", self.lease_ttl_ms, status, self._status_prefix()]
        code, now, flat = self._write(keys=self._write_keys(provider_id), args=args + self._detail_args(details))
        return Provider.from_hash(_pairs(flat)), code == 1, now

    @_wrap_errors
    def update(self, provider_id: str, details: dict[str, Any]) -> tuple[Provider, int]:
        """Replace a provider's details; its status and lease stay as they are.

        Raises:
            ProviderNotFound: no provider has this ID.
        """
        args = [provider_id, "update", self.lease_ttl_ms, "", self._status_prefix()]
        code, now, flat = self._write(keys=self._write_keys(provider_id), args=args + self._detail_args(details))
        if code == -1:
            raise ProviderNotFound(provider_id)
        return Provider.from_hash(_pairs(flat)), now

    @_wrap_errors
    def heartbeat(
        self,
        provider_id: str,
        status: str | None = None,
        gpu_metrics: list[dict[str, Any]] | None = None,
    ) -> tuple[Provider, str, int]:
        """Renew a provider's lease, set its status, merge live GPU metrics by position.

        Returns:
            The provider, its effective status before the heartbeat, and the server time in ms.
        Raises:
            ProviderNotFound: no provider has this ID.
        """
        metrics = ""
        if gpu_metrics:
            live = [{f: gpu[f] for f in LIVE_GPU_FIELDS if gpu.get(f) is not None} for gpu in gpu_metrics]
            metrics = _dumps(live)
        k = self.keys
        code, now, previous, flat = self._heartbeat(
            keys=[k.provider(provider_id), k.lease(provider_id), k.leases, k.irregular],
            args=[provider_id, self.lease_ttl_ms, status or "", metrics, self._status_prefix()],
        )
        if code == -1:
            raise ProviderNotFound(provider_id)
        return Provider.from_hash(_pairs(flat)), previous, now

    @_wrap_errors
    def get(self, provider_id: str) -> tuple[Provider, int]:
        """Return a provider and the server time in ms.

        Raises:
            ProviderNotFound: no provider has this ID.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(self.keys.provider(provider_id))
        (seconds, micros), fields = pipe.execute()
        if not fields:
            raise ProviderNotFound(provider_id)
        return Provider.from_hash(fields), seconds * 1000 + micros // 1000

    @_wrap_errors
    def delete(self, provider_id: str) -> None:
        """Deregister a provider and remove it from every index.

        Raises:
            ProviderNotFound: no provider has this ID.
        """
        k = self.keys
        deleted = self._delete(
            keys=[k.provider(provider_id), k.lease(provider_id), k.leases, k.providers, k.irregular],
            args=[provider_id, self._status_prefix()],
        )
        if not deleted:
            raise ProviderNotFound(provider_id)

    @_wrap_errors
    def query(self, filters: Filters, limit: int, cursor: str | None = None) -> Page:
        """Return the page of providers after `cursor` that match `filters`, in ID order."""
        k = self.keys
        if filters.gpu_model:
            gpu_key = k.gpu_model(filters.gpu_model, filters.min_gpus)
        elif filters.min_vram or filters.min_gpus > 1:
            gpu_key = k.gpu_any(filters.min_gpus)
        else:
            gpu_key = ""
        scratch = [k.tmp(f"query:{i}") for i in range(2 + len(STATUSES))]
        keys = [
            k.providers, k.leases, k.irregular, gpu_key,
            k.architecture(filters.architecture) if filters.architecture else "",
            k.location(filters.location) if filters.location else "",
            *scratch,
        ]
        args = [
            k.provider_prefix, self._status_prefix(), limit, cursor or "",
            ",".join(filters.statuses), filters.min_vram or 0, filters.min_gpus,
            "1" if (filters.healthy_only or filters.architecture) else "0",
            canonical_name(filters.gpu_model) if filters.gpu_model else "",
            canonical_name(filters.architecture) if filters.architecture else "",
            "1" if filters.healthy_only else "0",
        ]
        now, total, has_more, *rows = self._query(keys=keys, args=args)
        providers = [Provider.from_hash(_pairs(flat)) for _, flat in rows]
        next_cursor = providers[-1].id if has_more and providers else None
        return Page(providers=providers, total=total, next_cursor=next_cursor, now_ms=now)

    @_wrap_errors
    def sweep(self, batch: int = 1000) -> list[Transition]:
        """Turn up to `batch` lapsed leases into offline transitions."""
        now, *flat = self._sweep(
            keys=[self.keys.leases],
            args=[self.keys.provider_prefix, self._status_prefix(), batch],
        )
        return [
            Transition(provider_id=flat[i], previous_status=flat[i + 1], deadline_ms=int(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]

    @_wrap_errors
    def ping(self) -> None:
        """Check that Redis answers."""
        self.redis.ping()

