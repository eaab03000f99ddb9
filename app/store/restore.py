"""Snapshot and restore serialisation: whole hashes read out, and written back with their indexes."""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any, Iterator

import redis
from redis.cluster import RedisCluster
from orjson import loads as _fast_loads  # a restore parses every provider's GPUs

from .indexing import dumps, gpu_buckets, gpu_token, index_entries, is_claim_field, is_irregular, summary_contribution
from .keys import Keys
from .maintenance import ms
from ..rules import OFFLINE, counter_field
from .scripts import wrap_errors

log = logging.getLogger(__name__)


_TIME = b"*1\r\n$4\r\nTIME\r\n"


def _hgetall(key: bytes) -> bytes:
    """Return HGETALL `key` in the Redis protocol."""
    return b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%s\r\n" % (len(key), key)


@wrap_errors
def _send_reads(conn: Any, keys: Keys, provider_ids: list[str], retry: bool = False) -> Any:
    """Write TIME and an HGETALL per provider on `conn`; return the connection written to.

    `retry`: a pooled connection that died with a restarted Redis is replaced once (nothing
    was read from it yet, and these are reads: sending them again is safe).
    """
    prefix = keys.provider_prefix.encode()
    packed = b"".join([_TIME, *(_hgetall(prefix + provider_id.encode()) for provider_id in provider_ids)])
    try:
        conn.send_packed_command([packed])
    except redis.ConnectionError:
        if not retry:
            raise
        conn.disconnect()
        conn.send_packed_command([packed])
    return conn


@wrap_errors
def _receive_reads(conn: Any, provider_ids: list[str]) -> tuple[int, list[tuple[str, dict[str, str]]]]:
    """Read the replies of `_send_reads`: the time in ms, and each provider that exists."""
    seconds, micros = conn.read_response()  # a raw TIME reply: two strings
    found = []
    for provider_id in provider_ids:
        fields = conn.read_response()
        if fields:
            # RESP3 replies are a dict already, RESP2 ones a flat list.
            found.append((provider_id, fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2]))))
    return ms((int(seconds), int(micros))), found


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


class RestoreMixin:
    """The provider store's snapshot reads and restore writes (restore.lua)."""

    redis: redis.Redis
    keys: Keys
    _restore: Any
    _derived: dict[Any, tuple[Any, ...]]
    run_script: Any

    @wrap_errors
    def read_hashes(self, provider_ids: list[str]) -> tuple[int, list[tuple[str, dict[str, str]]]]:
        """Return the server time in ms and each provider's ID and whole hash, in one round trip.

        Each HGETALL is atomic, so no hash mixes two states of a provider; providers deleted
        since their ID was listed are left out.
        """
        if not provider_ids:
            return self.now_ms(), []
        ((now, found),) = self.iter_hashes(provider_ids, len(provider_ids))
        return now, found

    def iter_hashes(
        self, provider_ids: list[str], batch: int
    ) -> Iterator[tuple[int, list[tuple[str, dict[str, str]]]]]:
        """Yield `read_hashes` of each batch of `provider_ids`, the next batch already asked for.

        Redis reads the next batch while the caller works on this one, without a thread: the
        commands are written at once on a pooled connection and the replies read in turn,
        without redis-py's per-command machinery (about 40% of a snapshot's reading time).
        """
        batches = [provider_ids[i : i + batch] for i in range(0, len(provider_ids), batch)]
        if not batches:
            return
        if isinstance(self.redis, RedisCluster):  # a batch's keys may live on several nodes
            for ids in batches:
                yield self._read_hashes_pipelined(ids)
            return
        pool = self.redis.connection_pool
        conn = pool.get_connection()
        clean = False
        try:
            _send_reads(conn, self.keys, batches[0], retry=True)
            for n, ids in enumerate(batches):
                found = _receive_reads(conn, ids)
                # Asked for only now: Redis works on the next batch while the caller works on
                # this one, not while this one's replies are being read.
                if n + 1 < len(batches):
                    _send_reads(conn, self.keys, batches[n + 1])
                yield found
            clean = True
        finally:
            if not clean:
                conn.disconnect()  # its unread replies must not reach the next user
            pool.release(conn)

    @wrap_errors
    def _read_hashes_pipelined(self, provider_ids: list[str]) -> tuple[int, list[tuple[str, dict[str, str]]]]:
        # A cluster pipeline refuses TIME: the time is read first (a restore then caps
        # deadlines at an earlier now, which only makes a provider offline sooner).
        now = self.redis.time()
        pipe = self.redis.pipeline(transaction=False)
        for provider_id in provider_ids:
            pipe.hgetall(self.keys.provider(provider_id))
        hashes = pipe.execute()
        return ms(now), [(pid, fields) for pid, fields in zip(provider_ids, hashes) if fields]

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
        out["status"] = OFFLINE
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
                bucket_members = [(Keys.bucket(index, vram, OFFLINE), vram) for index, vram in buckets]
                sizes = [(index, vram) for index, vram in buckets]
                derived = (gpu_keys, dumps(contribution), contribution,
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
                counters[counter_field(OFFLINE, kind, name)] += n
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
