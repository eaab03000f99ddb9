"""The provider store: every read and write of providers, each one round trip to Redis."""
from __future__ import annotations

import hmac
import json
import logging
from collections import defaultdict
from typing import Any, Iterable

import redis
from redis.cluster import RedisCluster
from orjson import loads as _fast_loads  # a restore parses every provider's GPUs

from ..errors import Forbidden, ProviderNotFound, RateLimited, Unauthorized, VersionMismatch
from ..models import DETAIL_FIELDS, LIVE_GPU_FIELDS, Filters, Lease, Page, Provider, Transition
from .keys import STATUSES, Keys, canonical_name, fold_name
from .idempotency import run_script as run_fenced
from .idempotency import write_is_fenced
from .replication import Replication
from .scripts import FunctionLibrary, ScriptContext, load_script, pairs, wrap_errors

NOT_FOUND, TOKEN_MISMATCH, VERSION_MISMATCH, OVER_LIMIT = -1, -2, -3, -4
# The credential check meaning "the provider must not exist yet" (see write.lua).
MUST_BE_NEW = "!"


def token_mismatch(provider_id: str) -> Unauthorized:
    # One answer whether the provider has another token or the token is someone else's.
    return Unauthorized(f"the credential is not valid for provider {provider_id}", invalid=True)

log = logging.getLogger(__name__)


def is_claim_field(name: str) -> bool:
    """Return whether a hash field belongs to a claim (a restore drops them: claims end)."""
    return name.startswith("claim_") or name == "claimant"


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _ms(time_reply: tuple[int, int]) -> int:
    """Turn a Redis TIME reply (seconds, microseconds) into milliseconds."""
    seconds, micros = time_reply
    return seconds * 1000 + micros // 1000


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def gpu_token(gpu: dict[str, Any]) -> str:
    """Return a GPU's "model|architecture|vram" token, as the scripts compare GPUs.

    An unhealthy GPU's token ends with "!", so that scripts read health without decoding the
    GPU list (heartbeat.lua keeps the mark in step with `is_healthy`).
    """
    arch = canonical_name(gpu.get("architecture") or "")
    unhealthy = "!" if gpu.get("is_healthy") is False else ""
    return f"{canonical_name(gpu['model_name'])}|{arch}|{gpu['vram_mb']}{unhealthy}"


def index_entries(keys: Keys, details: dict[str, Any]) -> list[tuple[str, float]]:
    """Return the (index key, score 0) pairs of the detail indexes a provider belongs to.

    Architecture and location; the GPU indexes depend on the status too (`gpu_buckets`).
    """
    entries: dict[str, float] = {}
    for gpu in details["gpus"]:
        if gpu.get("architecture"):
            entries[keys.architecture(gpu["architecture"])] = 0
    if details.get("location"):
        entries[keys.location(details["location"])] = 0
    return list(entries.items())


def gpu_buckets(keys: Keys, details: dict[str, Any]) -> list[tuple[str, int]]:
    """Return the (GPU index, VRAM) pairs whose buckets a provider belongs to.

    For each model, the provider is in the index `gpu:<model>:<k>` for k = 1..(its GPUs of
    that model), in the bucket of the k-th largest VRAM of them (and of its stored status):
    "at least k GPUs of model M with VRAM >= v" is then the buckets of `gpu:<M>:<k>` from
    size v up, each already sorted by ID. `gpus:<k>` does the same across models.
    """
    vram_by_model: dict[str, list[int]] = defaultdict(list)
    for gpu in details["gpus"]:
        # Models that differ only in case or spacing share one index.
        vram_by_model[canonical_name(gpu["model_name"])].append(gpu["vram_mb"])
    out: list[tuple[str, int]] = []
    for model, vrams in vram_by_model.items():
        for k, vram in enumerate(sorted(vrams, reverse=True), start=1):
            out.append((keys.gpu_model_canonical(model, k), vram))
    all_vram = sorted((gpu["vram_mb"] for gpu in details["gpus"]), reverse=True)
    for k, vram in enumerate(all_vram, start=1):
        out.append((keys.gpu_any(k), vram))
    return out


def bucket_stems(keys: Keys, details: dict[str, Any]) -> str:
    """Return the hash field naming a provider's GPU buckets without their status."""
    return " ".join(f"{index}:{vram}" for index, vram in gpu_buckets(keys, details))


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


def is_irregular(gpu_keys: str, gpus: list[dict[str, Any]]) -> bool:
    """Return whether a provider belongs in the irregular set: lib.lua's rule, for a restore.

    Index arithmetic alone cannot answer a per-GPU filter for it: a GPU is unhealthy, or its
    GPUs differ in canonical model or architecture.
    """
    tokens = gpu_keys.split()
    kinds = {token.rsplit("|", 1)[0] for token in tokens}
    return len(kinds) > 1 or any(token.endswith("!") for token in tokens)


class ProviderStore:
    """Providers, their leases and their indexes in Redis."""

    def __init__(
        self, client: redis.Redis, keys: Keys, lease_ttl_s: float, events_max_len: int = 100_000,
        blind_after_s: float = 0.0, replicas: Replication | None = None,
        heartbeat_limits: Iterable[tuple[int, float]] = (), heartbeat_limit_text: str = "",
    ) -> None:
        """Args:
            blind_after_s: a pulse older than this means the registry was blind, and leases
                get their outage grace (lib.lua); 0 turns outage grace off.
            replicas: whether acknowledged writes wait for replicas and reads use them.
            heartbeat_limits: (amount, window in seconds) pairs: accepted heartbeats per
                provider, counted inside heartbeat.lua (none: no limit).
            heartbeat_limit_text: the limits as configured, for the 429's message.
        """
        self.redis = client
        self.keys = keys
        self.replicas = replicas or Replication()
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.ctx = ScriptContext(keys, events_max_len, self.lease_ttl_ms, int(blind_after_s * 1000))
        # A read on a replica must not write: lib.lua's outage check is off there (0).
        self._read_only_ctx = ScriptContext(keys, events_max_len, self.lease_ttl_ms, 0)
        self._write = load_script(client, "write")
        self._get = load_script(client, "get")
        self._pulse = load_script(client, "pulse")
        self._heartbeat = load_script(client, "heartbeat_script", "heartbeat")
        # The hot path: heartbeat.lua as a FUNCTION, with lib.lua loaded once (scripts.py).
        self._functions = FunctionLibrary(client)
        self.heartbeat_limits = " ".join(f"{amount} {int(window_s * 1000)}" for amount, window_s in heartbeat_limits)
        self.heartbeat_limit_text = heartbeat_limit_text
        self._delete = load_script(client, "delete")
        self._sweep = load_script(client, "sweep")
        self._query = load_script(client, "query", "select")
        self._rotate = load_script(client, "rotate")
        self._restore = load_script(client, "restore")
        # restore_args's derived values by GPU shape and location (see there).
        self._derived: dict[Any, tuple[Any, ...]] = {}

    def run_script(
        self, script: Any, keys: list[str], args: list[Any], client: Any = None,
        durable: bool = False, read_only: bool = False,
    ) -> Any:
        """Run a script with the fixed KEYS and ARGV of lib.lua before `keys` and `args`.

        `client` may be a pipeline, to batch calls (bench and bulk tools). `durable`: an
        acknowledged write, that waits for replicas; `read_only`: a read that a replica may
        serve (see replication.py).
        """
        if client is not None:
            return run_fenced(script, self.ctx.keys + keys, self.ctx.args + args, client)
        return self.replicas.run(
            self.redis, script, self.ctx.keys + keys, self.ctx.args + args, durable=durable,
            read_only_args=self._read_only_ctx.args + args if read_only else None,
        )

    def register_args(
        self, provider_id: str, details: dict[str, Any], status: str,
        token_hash: str = "", expected_token_hash: str = "",
    ) -> list[Any]:
        """Return write.lua's arguments (after the fixed ones) for a registration."""
        return [provider_id, "register", self.lease_ttl_ms, status, "", token_hash,
                expected_token_hash, *self._detail_args(details)]

    def heartbeat_args(
        self, provider_id: str, status: str | None = None,
        gpu_metrics: list[dict[str, Any]] | None = None, if_match: str = "",
        expected_token_hash: str = "",
    ) -> list[Any]:
        """Return heartbeat.lua's arguments (after the fixed ones) for a heartbeat."""
        metrics = ""
        if gpu_metrics:
            live = [{f: gpu[f] for f in LIVE_GPU_FIELDS if gpu.get(f) is not None} for gpu in gpu_metrics]
            metrics = _dumps(live)
        return [provider_id, self.lease_ttl_ms, status or "", metrics, if_match, expected_token_hash,
                self.heartbeat_limits]

    def _detail_args(self, details: dict[str, Any]) -> list[Any]:
        fields: list[Any] = []
        for name in DETAIL_FIELDS:
            value = details.get(name)
            fields += [name, "" if value is None else value]  # "" removes an old value
        fields += [
            "gpus", _dumps(details["gpus"]),
            "metadata", _dumps(details.get("metadata") or {}),
            "gpu_keys", " ".join(gpu_token(gpu) for gpu in details["gpus"]),
            "bucket_stems", bucket_stems(self.keys, details),
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
            self.register_args(provider_id, details, status, token_hash, expected_token_hash),
            durable=True,
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
            durable=True,
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

        One round trip: the token check and the per-provider heartbeat limit run inside the
        script, which writes nothing unless it renews (refused heartbeats do not count).

        Raises:
            ProviderNotFound: no provider has this ID.
            Unauthorized: `expected_token_hash` is given and is not the provider's.
            RateLimited: the provider is past its heartbeat limit.
            VersionMismatch: `if_match` does not hold the provider's version.
        """
        args = self.heartbeat_args(provider_id, status, gpu_metrics, if_match, expected_token_hash)
        if write_is_fenced() or not self._functions.usable():
            code, now, fields = self.run_script(self._heartbeat, [], args)
        else:
            code, now, fields = self._functions.call("heartbeat", self.ctx.keys, self.ctx.args + args)
        if code == NOT_FOUND:
            raise ProviderNotFound(provider_id)
        if code == TOKEN_MISMATCH:
            raise token_mismatch(provider_id)
        if code == OVER_LIMIT:
            raise RateLimited(
                f"too many heartbeats for this provider (limit {self.heartbeat_limit_text})",
                -(-int(fields[0]) // 1000),
            )
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
        now, flat = self.run_script(self._get, [], [provider_id], read_only=True)
        fields = pairs(flat)
        if not fields:
            raise ProviderNotFound(provider_id)
        if expected_token_hash and not hmac.compare_digest(
            fields.get("token_hash", ""), expected_token_hash
        ):
            raise token_mismatch(provider_id)
        return Provider.from_hash(fields), now

    @wrap_errors
    def pulse(self) -> int:
        """Tell the registry that this process reaches Redis now; return Redis's time in ms."""
        return self.run_script(self._pulse, [], [])

    @wrap_errors
    def token_matches(self, provider_id: str, token_hash: str) -> bool:
        """Tell whether `token_hash` is the provider's stored token hash; False for no provider.

        One HGET, for the paths that must check a token before the write script would.
        """
        stored = self.redis.hget(self.keys.provider(provider_id), "token_hash") or ""
        return bool(stored) and hmac.compare_digest(stored, token_hash)

    @wrap_errors
    def delete(self, provider_id: str, if_match: str = "", expected_token_hash: str = "") -> None:
        """Deregister a provider and remove it from every index; ends any claim.

        Raises:
            ProviderNotFound: no provider has this ID.
            Unauthorized: `expected_token_hash` is given and is not the provider's.
            VersionMismatch: `if_match` does not hold the provider's version.
        """
        code, version = self.run_script(
            self._delete, [], [provider_id, if_match, expected_token_hash], durable=True
        )
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
        code = self.run_script(
            self._rotate, [], [provider_id, expected_token_hash, new_token_hash], durable=True
        )
        if code == NOT_FOUND:
            raise ProviderNotFound(provider_id)
        if code == TOKEN_MISMATCH:
            raise token_mismatch(provider_id)

    def filter_keys(self, filters: Filters) -> list[str]:
        """Return the filter KEYS of select.lua for `filters`."""
        k = self.keys
        by_model = filters.gpu_model or filters.gpu_model_exact
        any_gpu = not by_model and (filters.min_vram or filters.min_gpus > 1)
        scratch = [k.tmp(f"select:{i}") for i in range(3 + len(STATUSES))]
        return [
            k.gpu_any(filters.min_gpus) if any_gpu else k.no_key,
            k.location(filters.location) if filters.location else k.no_key,
            *scratch,
        ]

    @staticmethod
    def filter_args(filters: Filters) -> list[Any]:
        """Return the filter ARGV of select.lua for `filters`.

        Substrings are matched against folded names, exact names as canonical ones.
        """
        def folded(name: str | None) -> str:
            return fold_name(name) if name else ""

        def canonical(name: str | None) -> str:
            return canonical_name(name) if name else ""

        return [
            ",".join(filters.statuses), filters.min_vram or 0, filters.min_gpus,
            folded(filters.gpu_model), canonical(filters.gpu_model_exact),
            folded(filters.architecture), canonical(filters.architecture_exact),
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
            read_only=True,
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

    @wrap_errors
    def now_ms(self) -> int:
        """Return Redis server time in ms, the registry's one clock."""
        return _ms(self.redis.time())

    @wrap_errors
    def count(self) -> int:
        """Return how many providers are registered."""
        return self.redis.zcard(self.keys.providers)

    @wrap_errors
    def provider_ids(self) -> list[str]:
        """Return the ID of every registered provider, in ID order."""
        return self.redis.zrange(self.keys.providers, 0, -1)

    @wrap_errors
    def read_hashes(self, provider_ids: list[str]) -> tuple[int, list[tuple[str, dict[str, str]]]]:
        """Return the server time in ms and each provider's ID and whole hash, in one round trip.

        Each HGETALL is atomic, so no hash mixes two states of a provider; providers deleted
        since their ID was listed are left out.
        """
        pipe = self.redis.pipeline(transaction=False)
        if isinstance(self.redis, RedisCluster):
            # A cluster pipeline refuses TIME: the time is read first (a restore then caps
            # deadlines at an earlier now, which only makes a provider offline sooner).
            now = self.redis.time()
        else:
            pipe.time()
        for provider_id in provider_ids:
            pipe.hgetall(self.keys.provider(provider_id))
        replies = pipe.execute()
        if not isinstance(self.redis, RedisCluster):
            now, *replies = replies
        hashes = replies
        found = [(pid, fields) for pid, fields in zip(provider_ids, hashes) if fields]
        return _ms(now), found

    @wrap_errors
    def generation(self) -> str | None:
        """Return the data set's generation marker, or None when Redis has none."""
        return self.redis.get(self.keys.generation)

    @wrap_errors
    def set_generation(self, generation: str) -> None:
        """Set the data set's generation marker."""
        self.redis.set(self.keys.generation, generation)

    @wrap_errors
    def wipe(self, keep: tuple[str, ...] = ()) -> int:
        """Delete every key of this registry except `keep`; return how many were deleted."""
        deleted = 0
        batch: list[str] = []
        for key in self.redis.scan_iter(match=self.keys.pattern(), count=1000):
            if key not in keep:
                batch.append(key)
            if len(batch) >= 1000:
                deleted += self.redis.unlink(*batch)
                batch = []
        if batch:
            deleted += self.redis.unlink(*batch)
        return deleted

    def restored_hash(
        self, provider_id: str, fields: dict[str, str], now_ms: int
    ) -> tuple[dict[str, str], Any, bool, list[list[Any]]]:
        """Return a provider as a restore writes it back, from its snapshotted hash.

        The provider comes back offline and without a lease (its deadline is at most now),
        without its claim, and with its indexes and counters rebuilt by the same logic as a
        write; every other field is written back as it was.

        Returns:
            The hash; its detail index entries, bucket entries and GPU index sizes; whether
            it is irregular; its counter contribution.
        """
        out = {
            name: value for name, value in fields.items()
            if not is_claim_field(name) and name != "grace_until"
        }
        out["status"] = "offline"
        deadline = _int_or_none(out.get("lease_expires_at"))
        if deadline is None or deadline > now_ms:
            out["lease_expires_at"] = str(now_ms)
        try:
            gpus = _fast_loads(out.get("gpus") or "[]")
            # What the indexes, counters and tokens depend on; live metrics are left out, so a
            # fleet of a few hardware kinds computes them a few times, not once per provider.
            shape = (out.get("location"), tuple(
                (gpu["model_name"], gpu["vram_mb"], gpu.get("architecture"), gpu.get("is_healthy"))
                for gpu in gpus
            ))
            derived = self._derived.get(shape)
            if derived is None:
                details = {"gpus": gpus, "location": out.get("location")}
                gpu_keys = " ".join(gpu_token(gpu) for gpu in gpus)
                contribution = summary_contribution(details)
                buckets = gpu_buckets(self.keys, details)
                stems = " ".join(f"{index}:{vram}" for index, vram in buckets)
                # Restored providers are offline: their buckets are the offline ones, and each
                # GPU index records the VRAM sizes present (member and score the size).
                entries = index_entries(self.keys, details)
                bucket_members = [(Keys.bucket(index, vram, "offline"), vram) for index, vram in buckets]
                sizes = [(index, vram) for index, vram in buckets]
                derived = (gpu_keys, _dumps(contribution), contribution,
                           (entries, bucket_members, sizes, stems), is_irregular(gpu_keys, gpus))
                if len(self._derived) >= 4096:
                    self._derived.clear()
                self._derived[shape] = derived
            out["gpu_keys"], out["summary"], contribution, indexes, irregular = derived
            entries, bucket_members, sizes, out["bucket_stems"] = indexes
        except (ValueError, TypeError, KeyError, AttributeError):
            # A damaged provider still comes back, outside the GPU indexes, rather than not at all.
            log.warning("restored provider has unreadable GPUs", extra={"provider_id": provider_id})
            entries = [(self.keys.location(out["location"]), 0)] if out.get("location") else []
            bucket_members, sizes = [], []
            out["bucket_stems"] = ""
            irregular = False
            try:
                contribution = json.loads(out.get("summary") or "[]")
            except ValueError:
                contribution = []
        out["index_keys"] = " ".join(key for key, _ in entries)
        return out, (entries, bucket_members, sizes), irregular, contribution

    def restore_batch(self, hashes: list[tuple[str, dict[str, str]]], now_ms: int) -> list[Any]:
        """Return the restore script's arguments for a batch of (ID, snapshotted hash).

        Index members and counters come grouped by key for the whole batch (see restore.lua).
        """
        providers: list[Any] = [len(hashes)]
        groups: dict[str, list[Any]] = defaultdict(list)
        irregular_ids: list[str] = []
        counters: dict[str, int] = defaultdict(int)
        sizes_seen: set[tuple[str, int]] = set()
        for provider_id, fields in hashes:
            out, (entries, buckets, sizes), irregular, contribution = self.restored_hash(
                provider_id, fields, now_ms
            )
            providers += [provider_id, len(out)]
            for name, value in out.items():
                providers += [name, value]
            for key, score in [*entries, *buckets]:
                groups[key] += [score, provider_id]
            for index, vram in sizes:
                if (index, vram) not in sizes_seen:  # a size once per batch, not per provider
                    sizes_seen.add((index, vram))
                    groups[index] += [vram, vram]
            if irregular:
                irregular_ids.append(provider_id)
            for kind, name, n in contribution:
                counters[f"offline|{kind}|{name}"] += n
        args = providers + [len(groups)]
        for key, members in groups.items():
            args += [key, len(members) // 2, *members]
        args += [len(irregular_ids), *irregular_ids, len(counters)]
        for name, n in counters.items():
            args += [name, n]
        return args

    @wrap_errors
    def write_restored(self, batch: list[Any]) -> int:
        """Run the restore script on a batch from `restore_batch`; return how many it wrote.

        Providers that exist already are left as they are.
        """
        return self.run_script(self._restore, [], batch)

    def restore(self, hashes: list[tuple[str, dict[str, str]]], now_ms: int) -> int:
        """Write back snapshotted providers (see `restore_args`) in one round trip.

        Providers that exist already are left as they are. Returns how many were written.
        """
        if not hashes:
            return 0
        return self.write_restored(self.restore_batch(hashes, now_ms))
