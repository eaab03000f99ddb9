"""The provider store: every read and write of providers, each one round trip to Redis."""
from __future__ import annotations

import hmac
import json
from collections import defaultdict
from typing import Any

import redis

from ..errors import Forbidden, ProviderNotFound, Unauthorized, VersionMismatch
from ..models import DETAIL_FIELDS, Filters, Lease, Page, Provider, Transition
from .keys import STATUSES, Keys, canonical_name, fold_name
from .scripts import ScriptContext, load_script, pairs, wrap_errors

# Live GPU fields a heartbeat may update; the rest of a GPU changes only with its details.
LIVE_GPU_FIELDS = (
    "utilization_gpu_percent",
    "utilization_memory_percent",
    "temperature_c",
    "power_draw_w",
    "is_healthy",
)
NOT_FOUND, TOKEN_MISMATCH, VERSION_MISMATCH = -1, -2, -3
# The credential check meaning "the provider must not exist yet" (see write.lua).
MUST_BE_NEW = "!"


def token_mismatch(provider_id: str) -> Unauthorized:
    # One answer whether the provider has another token or the token is someone else's.
    return Unauthorized(f"the credential is not valid for provider {provider_id}", invalid=True)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def gpu_token(gpu: dict[str, Any]) -> str:
    """Return a GPU's "model|architecture|vram" token, as the scripts compare GPUs."""
    arch = canonical_name(gpu.get("architecture") or "")
    return f"{canonical_name(gpu['model_name'])}|{arch}|{gpu['vram_mb']}"


def index_entries(keys: Keys, details: dict[str, Any]) -> list[tuple[str, float]]:
    """Return the (index key, score) pairs that a provider with these details belongs to.

    For each model, the provider is in `gpu:<model>:<k>` for k = 1..(its GPUs of that model),
    scored by the k-th largest VRAM of them: "at least k GPUs of model M with VRAM >= v" is
    then one score range. `gpus:<k>` does the same across models.
    """
    vram_by_model: dict[str, list[int]] = defaultdict(list)
    all_vram: list[int] = []
    entries: dict[str, float] = {}
    for gpu in details["gpus"]:
        # Models that differ only in case or spacing share one index.
        vram_by_model[canonical_name(gpu["model_name"])].append(gpu["vram_mb"])
        all_vram.append(gpu["vram_mb"])
        if gpu.get("architecture"):
            entries[keys.architecture(gpu["architecture"])] = 0
    for model, vrams in vram_by_model.items():
        for k, vram in enumerate(sorted(vrams, reverse=True), start=1):
            entries[keys.gpu_model_canonical(model, k)] = vram
    for k, vram in enumerate(sorted(all_vram, reverse=True), start=1):
        entries[keys.gpu_any(k)] = vram
    if details.get("location"):
        entries[keys.location(details["location"])] = 0
    return list(entries.items())


def summary_contribution(details: dict[str, Any]) -> list[list[Any]]:
    """Return what a provider adds to the capacity counters: [kind, name, amount] triples.

    Kinds: n providers; mp/mg/mv providers, GPUs and VRAM per model; lp/lg providers and
    GPUs per location. Names are folded, so "A100" and "a100" count together.
    """
    out: list[list[Any]] = [["n", "", 1]]
    gpus: dict[str, list[int]] = defaultdict(list)
    for gpu in details["gpus"]:
        gpus[fold_name(gpu["model_name"])].append(gpu["vram_mb"])
    for model, vrams in gpus.items():
        out += [["mp", model, 1], ["mg", model, len(vrams)], ["mv", model, sum(vrams)]]
    if details.get("location"):
        location = fold_name(details["location"])
        out += [["lp", location, 1], ["lg", location, len(details["gpus"])]]
    return out


class ProviderStore:
    """Providers, their leases and their indexes in Redis."""

    def __init__(
        self, client: redis.Redis, keys: Keys, lease_ttl_s: float, events_max_len: int = 100_000
    ) -> None:
        self.redis = client
        self.keys = keys
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.ctx = ScriptContext(keys, events_max_len)
        self._write = load_script(client, "write")
        self._heartbeat = load_script(client, "heartbeat")
        self._delete = load_script(client, "delete")
        self._sweep = load_script(client, "sweep")
        self._query = load_script(client, "query", "select")
        self._rotate = load_script(client, "rotate")

    def run_script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a script with the fixed KEYS and ARGV of lib.lua before `keys` and `args`."""
        return script(keys=self.ctx.keys + keys, args=self.ctx.args + args)

    def _detail_args(self, details: dict[str, Any]) -> list[Any]:
        fields: list[Any] = []
        for name in DETAIL_FIELDS:
            value = details.get(name)
            fields += [name, "" if value is None else value]  # "" removes an old value
        fields += [
            "gpus", _dumps(details["gpus"]),
            "metadata", _dumps(details.get("metadata") or {}),
            "gpu_keys", " ".join(gpu_token(gpu) for gpu in details["gpus"]),
            "summary", _dumps(summary_contribution(details)),
        ]
        args: list[Any] = [len(fields) // 2, *fields]
        for key, score in index_entries(self.keys, details):
            args += [key, score]
        return args

    @wrap_errors
    def register(
        self,
        provider_id: str,
        details: dict[str, Any],
        status: str,
        token_hash: str = "",
        expected_token_hash: str = "",
    ) -> tuple[Provider, bool, int]:
        """Create or replace a provider and start its lease; ends any claim it had.

        Args:
            token_hash: SHA-256 of a new provider token, kept on creation or on a replacement
                that checked no token; "" keeps the stored one.
            expected_token_hash: "" for no check, MUST_BE_NEW to refuse replacing, else the
                SHA-256 the stored token hash must equal.
        Returns:
            The provider, whether it was created, and the server time in ms.
        Raises:
            Unauthorized: the token does not match. Forbidden: MUST_BE_NEW and it exists.
        """
        code, now, flat = self.run_script(
            self._write, [],
            [provider_id, "register", self.lease_ttl_ms, status, "", token_hash, expected_token_hash,
             *self._detail_args(details)],
        )
        if code == TOKEN_MISMATCH:
            if expected_token_hash == MUST_BE_NEW:
                raise Forbidden(
                    f"provider {provider_id} exists: re-registering it needs its token or an admin key"
                )
            raise token_mismatch(provider_id)
        return Provider.from_hash(pairs(flat)), code == 1, now

    @wrap_errors
    def update(
        self, provider_id: str, details: dict[str, Any], if_match: str = "", expected_token_hash: str = ""
    ) -> tuple[Provider, int]:
        """Replace a provider's details; its status, lease and token stay as they are.

        Raises:
            ProviderNotFound: no provider has this ID.
            Unauthorized: `expected_token_hash` is not the provider's.
            VersionMismatch: `if_match` (comma list of versions) does not hold the version.
        """
        code, now, flat = self.run_script(
            self._write, [],
            [provider_id, "update", self.lease_ttl_ms, "", if_match, "", expected_token_hash,
             *self._detail_args(details)],
        )
        return self._checked(provider_id, code, flat), now

    @wrap_errors
    def heartbeat(
        self,
        provider_id: str,
        status: str | None = None,
        gpu_metrics: list[dict[str, Any]] | None = None,
        if_match: str = "",
        expected_token_hash: str = "",
    ) -> Lease:
        """Renew a provider's lease, set its status, merge live GPU metrics by position.

        Raises:
            ProviderNotFound: no provider has this ID.
            Unauthorized: `expected_token_hash` is given and is not the provider's.
            VersionMismatch: `if_match` does not hold the provider's version.
        """
        metrics = ""
        if gpu_metrics:
            live = [{f: gpu[f] for f in LIVE_GPU_FIELDS if gpu.get(f) is not None} for gpu in gpu_metrics]
            metrics = _dumps(live)
        code, now, fields = self.run_script(
            self._heartbeat, [],
            [provider_id, self.lease_ttl_ms, status or "", metrics, if_match, expected_token_hash],
        )
        if code == NOT_FOUND:
            raise ProviderNotFound(provider_id)
        if code == TOKEN_MISMATCH:
            raise token_mismatch(provider_id)
        stored, last_seen, deadline, version = fields
        if code == VERSION_MISMATCH:
            raise VersionMismatch(int(version))
        return Lease(provider_id, stored, int(last_seen), int(deadline), int(version), now)

    def _checked(self, provider_id: str, code: int, flat: list[str]) -> Provider:
        if code == NOT_FOUND:
            raise ProviderNotFound(provider_id)
        if code == TOKEN_MISMATCH:
            raise token_mismatch(provider_id)
        provider = Provider.from_hash(pairs(flat))
        if code == VERSION_MISMATCH:
            raise VersionMismatch(provider.version)
        return provider

    @wrap_errors
    def get(self, provider_id: str, expected_token_hash: str = "") -> tuple[Provider, int]:
        """Return a provider and the server time in ms.

        Raises:
            ProviderNotFound: no provider has this ID.
            Unauthorized: `expected_token_hash` is given and is not the provider's.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(self.keys.provider(provider_id))
        (seconds, micros), fields = pipe.execute()
        if not fields:
            raise ProviderNotFound(provider_id)
        if expected_token_hash and not hmac.compare_digest(
            fields.get("token_hash", ""), expected_token_hash
        ):
            raise token_mismatch(provider_id)
        return Provider.from_hash(fields), seconds * 1000 + micros // 1000

    @wrap_errors
    def delete(self, provider_id: str, if_match: str = "", expected_token_hash: str = "") -> None:
        """Deregister a provider and remove it from every index; ends any claim.

        Raises:
            ProviderNotFound: no provider has this ID.
            Unauthorized: `expected_token_hash` is given and is not the provider's.
            VersionMismatch: `if_match` does not hold the provider's version.
        """
        code, version = self.run_script(self._delete, [], [provider_id, if_match, expected_token_hash])
        if code == NOT_FOUND:
            raise ProviderNotFound(provider_id)
        if code == TOKEN_MISMATCH:
            raise token_mismatch(provider_id)
        if code == VERSION_MISMATCH:
            raise VersionMismatch(version)

    @wrap_errors
    def rotate_token(self, provider_id: str, new_token_hash: str, expected_token_hash: str = "") -> None:
        """Replace a provider's token hash; the old token stops working at once.

        Raises:
            ProviderNotFound: no provider has this ID.
            Unauthorized: `expected_token_hash` is given and is not the provider's.
        """
        code = self.run_script(self._rotate, [], [provider_id, expected_token_hash, new_token_hash])
        if code == NOT_FOUND:
            raise ProviderNotFound(provider_id)
        if code == TOKEN_MISMATCH:
            raise token_mismatch(provider_id)

    def filter_keys(self, filters: Filters) -> list[str]:
        """Return the filter KEYS of select.lua for `filters`."""
        k = self.keys
        if filters.gpu_model:
            gpu_key = k.gpu_model(filters.gpu_model, filters.min_gpus)
        elif filters.min_vram or filters.min_gpus > 1:
            gpu_key = k.gpu_any(filters.min_gpus)
        else:
            gpu_key = ""
        scratch = [k.tmp(f"select:{i}") for i in range(2 + len(STATUSES))]
        return [
            gpu_key,
            k.architecture(filters.architecture) if filters.architecture else "",
            k.location(filters.location) if filters.location else "",
            *scratch,
        ]

    @staticmethod
    def filter_args(filters: Filters) -> list[Any]:
        """Return the filter ARGV of select.lua for `filters`."""
        return [
            ",".join(filters.statuses), filters.min_vram or 0, filters.min_gpus,
            canonical_name(filters.gpu_model) if filters.gpu_model else "",
            canonical_name(filters.architecture) if filters.architecture else "",
            "1" if filters.healthy_only else "0",
            filters.sort, "1" if filters.descending else "0",
        ]

    @wrap_errors
    def query(self, filters: Filters, limit: int, cursor: tuple[str, int | None] | None = None) -> Page:
        """Return the page after `cursor` of providers that match `filters`.

        The order is ascending ID, or the sort of `filters` with ties broken by ID; `cursor`
        is the (ID, sort value) of the last provider of the previous page.
        """
        cursor_id, cursor_value = cursor if cursor else ("", None)
        now, total, has_more, *rows = self.run_script(
            self._query,
            self.filter_keys(filters),
            [*self.filter_args(filters), limit, cursor_id, "" if cursor_value is None else cursor_value],
        )
        providers = [Provider.from_hash(pairs(flat)) for _, flat, _ in rows]
        next_cursor = None
        if has_more and rows:
            last_id, _, last_value = rows[-1]
            next_cursor = (last_id, int(float(last_value)) if filters.sort else None)
        return Page(providers=providers, total=total, next_cursor=next_cursor, now_ms=now)

    @wrap_errors
    def sweep(self, batch: int = 1000) -> tuple[list[Transition], bool]:
        """Settle up to `batch` lapsed leases and claims.

        Returns:
            The status transitions made, and whether more lapsed entries may be waiting.
        """
        now, found, *flat = self.run_script(self._sweep, [], [batch])
        transitions = [
            Transition(provider_id=flat[i], previous_status=flat[i + 1], status=flat[i + 2])
            for i in range(0, len(flat), 3)
        ]
        return transitions, found >= batch

    @wrap_errors
    def ping(self, client: redis.Redis | None = None) -> None:
        """Check that Redis answers, on `client` (one with tighter timeouts) or the store's own."""
        (client or self.redis).ping()
