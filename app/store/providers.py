"""The provider store: register, update, heartbeat, get, delete and rotate a provider.

Each is one round trip to Redis. Public writes take an optional `pipeline=` to be queued
with other commands (as rq's registries do); they then return nothing, and the script's
reply comes from `pipeline.execute()` (without the error mapping of a direct call).
"""
from __future__ import annotations

import hmac
import logging
from typing import Any, Iterable

import redis

from ..errors import Forbidden, ProviderNotFound, RateLimited, Unauthorized, VersionMismatch
from ..gpu_fragments import live_fragments, split_gpus
from ..models import DETAIL_FIELDS, Lease, Provider
from ..rules import LIVE_GPU_FIELDS, UNHEALTHY_MARK
from .idempotency import run_script as run_fenced
from .idempotency import write_is_fenced
from .indexing import bucket_stems, dumps, gpu_token, index_entries, summary_contribution
from .keys import Keys
from .maintenance import MaintenanceMixin
from .replication import Replication
from .restore import RestoreMixin
from .scripts import FunctionLibrary, ScriptContext, load_script, pairs, wrap_errors
from .selection import QueryMixin

NOT_FOUND, TOKEN_MISMATCH, VERSION_MISMATCH, OVER_LIMIT = -1, -2, -3, -4
# The credential check meaning "the provider must not exist yet" (see write.lua).
MUST_BE_NEW = "!"

log = logging.getLogger(__name__)


def live_health(live: list[dict[str, Any]]) -> str:
    """Return heartbeat.lua's health pattern of complete metrics, or "" for incomplete ones.

    Metrics that give every live field of every GPU replace the stored live values whole;
    when their health marks also equal the stored ones (`gpu_keys` with everything but the
    spaces and the "!" of unhealthy GPUs removed), no index changes, and heartbeat.lua writes
    them without decoding anything. "=" first, so that one healthy GPU is not "".
    """
    if not all(len(gpu) == len(LIVE_GPU_FIELDS) for gpu in live):
        return ""
    return "=" + " ".join(UNHEALTHY_MARK if gpu["is_healthy"] is False else "" for gpu in live)


def token_mismatch(provider_id: str) -> Unauthorized:
    """Return the one answer whether the provider has another token or the token is someone else's."""
    return Unauthorized(f"the credential is not valid for provider {provider_id}", invalid=True)


class ProviderStore(QueryMixin, MaintenanceMixin, RestoreMixin):
    """Providers, their leases and their indexes in Redis.

    CRUD lives here; the query (selection.py), the registry-wide operations (maintenance.py)
    and snapshot/restore serialisation (restore.py) come from their own modules.
    """

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

    def close(self) -> None:
        """Close the connections the store holds besides its client's pool (the FUNCTION's)."""
        self._functions.close()

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
        metrics, health = "", ""
        if gpu_metrics:
            live = [{f: gpu[f] for f in LIVE_GPU_FIELDS if gpu.get(f) is not None} for gpu in gpu_metrics]
            metrics = live_fragments(live)
            health = live_health(live)
        return [provider_id, self.lease_ttl_ms, status or "", metrics, if_match, expected_token_hash,
                self.heartbeat_limits, health]

    def _detail_args(self, details: dict[str, Any]) -> list[Any]:
        fields: list[Any] = []
        for name in DETAIL_FIELDS:
            value = details.get(name)
            fields += [name, "" if value is None else value]  # "" removes an old value
        gpus = split_gpus(details["gpus"])
        fields += [
            # New GPUs come with their own live values, or none: not the old GPUs' ones.
            "gpu_specs", gpus["gpu_specs"],
            "gpu_live", gpus["gpu_live"],
            "gpus", "",  # the list as layouts before 3 kept it, on a hash not yet migrated
            "metadata", dumps(details.get("metadata") or {}),
            "gpu_keys", " ".join(gpu_token(gpu) for gpu in details["gpus"]),
            "bucket_stems", bucket_stems(self.keys, details),
            "summary", dumps(summary_contribution(details)),
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
        pipeline: Any = None,
    ) -> tuple[Provider, bool, int] | None:
        """Create or replace a provider and start its lease; ends any claim it had.

        Args:
            token_hash: SHA-256 of a new provider token, kept on creation or on a replacement
                that checked no token; "" keeps the stored one.
            expected_token_hash: "" for no check, MUST_BE_NEW to refuse replacing, else the
                SHA-256 the stored token hash must equal.
        Returns:
            The provider, whether it was created, and the server time in ms; None when
            queued on `pipeline` (its reply is write.lua's, from `pipeline.execute()`).
        Raises:
            Unauthorized: the token does not match. Forbidden: MUST_BE_NEW and it exists.
        """
        args = self.register_args(provider_id, details, status, token_hash, expected_token_hash)
        if pipeline is not None:
            self.run_script(self._write, [], args, client=pipeline)
            return None
        code, now, flat = self.run_script(self._write, [], args, durable=True)
        if code == TOKEN_MISMATCH:
            if expected_token_hash == MUST_BE_NEW:
                raise Forbidden(
                    f"provider {provider_id} exists: re-registering it needs its token or an admin key"
                )
            raise token_mismatch(provider_id)
        return Provider.from_hash(pairs(flat)), code == 1, now

    @wrap_errors
    def update(
        self, provider_id: str, details: dict[str, Any], if_match: str = "", expected_token_hash: str = "",
        pipeline: Any = None,
    ) -> tuple[Provider, int] | None:
        """Replace a provider's details; its status, lease and token stay as they are.

        Raises:
            ProviderNotFound: no provider has this ID.
            Unauthorized: `expected_token_hash` is not the provider's.
            VersionMismatch: `if_match` (comma list of versions) does not hold the version.
        """
        args = [provider_id, "update", self.lease_ttl_ms, "", if_match, "", expected_token_hash,
                *self._detail_args(details)]
        if pipeline is not None:
            self.run_script(self._write, [], args, client=pipeline)
            return None
        code, now, flat = self.run_script(self._write, [], args, durable=True)
        return self._checked(provider_id, code, flat), now

    @wrap_errors
    def heartbeat(
        self,
        provider_id: str,
        status: str | None = None,
        gpu_metrics: list[dict[str, Any]] | None = None,
        if_match: str = "",
        expected_token_hash: str = "",
        pipeline: Any = None,
    ) -> Lease | None:
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
        if pipeline is not None:
            # A pipeline batches scripts: the FUNCTION's direct connection is not part of it.
            self.run_script(self._heartbeat, [], args, client=pipeline)
            return None
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
    def token_matches(self, provider_id: str, token_hash: str) -> bool:
        """Tell whether `token_hash` is the provider's stored token hash; False for no provider.

        One HGET, for the paths that must check a token before the write script would.
        """
        stored = self.redis.hget(self.keys.provider(provider_id), "token_hash") or ""
        return bool(stored) and hmac.compare_digest(stored, token_hash)

    @wrap_errors
    def delete(
        self, provider_id: str, if_match: str = "", expected_token_hash: str = "", pipeline: Any = None
    ) -> None:
        """Deregister a provider and remove it from every index; ends any claim.

        Raises:
            ProviderNotFound: no provider has this ID.
            Unauthorized: `expected_token_hash` is given and is not the provider's.
            VersionMismatch: `if_match` does not hold the provider's version.
        """
        args = [provider_id, if_match, expected_token_hash]
        if pipeline is not None:
            self.run_script(self._delete, [], args, client=pipeline)
            return
        code, version = self.run_script(self._delete, [], args, durable=True)
        if code == NOT_FOUND:
            raise ProviderNotFound(provider_id)
        if code == TOKEN_MISMATCH:
            raise token_mismatch(provider_id)
        if code == VERSION_MISMATCH:
            raise VersionMismatch(version)

    @wrap_errors
    def rotate_token(
        self, provider_id: str, new_token_hash: str, expected_token_hash: str = "", pipeline: Any = None
    ) -> None:
        """Replace a provider's token hash; the old token stops working at once.

        Raises:
            ProviderNotFound: no provider has this ID.
            Unauthorized: `expected_token_hash` is given and is not the provider's.
        """
        args = [provider_id, expected_token_hash, new_token_hash]
        if pipeline is not None:
            self.run_script(self._rotate, [], args, client=pipeline)
            return
        code = self.run_script(self._rotate, [], args, durable=True)
        if code == NOT_FOUND:
            raise ProviderNotFound(provider_id)
        if code == TOKEN_MISMATCH:
            raise token_mismatch(provider_id)

