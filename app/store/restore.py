"""Snapshot and restore serialisation: whole hashes read out, and written back with their indexes."""
from __future__ import annotations

import json
import logging
import struct
from collections import defaultdict
from itertools import chain
from typing import Any, Iterator

import hiredis
import redis
from redis.cluster import RedisCluster

from ..gpu_fragments import gpus_of, health_marks, legacy_gpus, split_gpus
from .indexing import dumps, gpu_buckets, gpu_token, index_entries, is_claim_field, is_irregular, summary_contribution
from .keys import Keys
from .maintenance import ms
from ..rules import OFFLINE, counter_field
from . import wire
from .scripts import wrap_errors

log = logging.getLogger(__name__)


# restore.lua numbers a batch's providers with 16-bit positions, and unpacks the members of
# one index key (two values per provider) into one ZADD: Lua's unpack takes at most ~8,000.
MAX_RESTORE_BATCH = 2000
# Names that may be a claim field or "grace_until", which a restore drops.
_DROPPED = ("claim", "grace_until")

_TIME = hiredis.pack_command(("TIME",))


@wrap_errors
def _send_reads(conn: Any, keys: Keys, provider_ids: list[str], retry: bool = False) -> None:
    """Write TIME and an HGETALL per provider on `conn` (see wire.send for `retry`)."""
    prefix = keys.provider_prefix.encode()
    packed = b"".join([_TIME, *(hiredis.pack_command((b"HGETALL", prefix + pid.encode())) for pid in provider_ids)])
    wire.send(conn, packed, retry)


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
        with wire.pooled(self.redis) as conn:
            _send_reads(conn, self.keys, batches[0], retry=True)
            for n, ids in enumerate(batches):
                found = _receive_reads(conn, ids)
                # Asked for only now: Redis works on the next batch while the caller works on
                # this one, not while this one's replies are being read.
                if n + 1 < len(batches):
                    _send_reads(conn, self.keys, batches[n + 1])
                yield found

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
            The hash; its indexes, as (detail index and bucket (key, score) entries, GPU index
            sizes), one object shared by the providers of one hardware shape; whether it is
            irregular; its counter contribution.
        """
        out = dict(fields)
        # Claim fields all start with "claim"; one pass over the names finds them.
        for name in [name for name in out if name.startswith(_DROPPED)]:
            if is_claim_field(name) or name == "grace_until":
                del out[name]
        out["status"] = OFFLINE
        deadline = _int_or_none(out.get("lease_expires_at"))
        if deadline is None or deadline > now_ms:
            out["lease_expires_at"] = str(now_ms)
        location = out.get("location")
        try:
            if "gpu_specs" not in out:  # a snapshot of an older layout: its GPUs as layout 3 keeps them
                out.update(split_gpus(legacy_gpus(out.pop("gpus", None) or "[]", out.get("gpu_live"))))
            # What the indexes, counters and tokens depend on: the specs and each GPU's health,
            # not the other live values, so a fleet of a few hardware kinds computes them a few
            # times, not once per provider.
            shape = (location, out["gpu_specs"], health_marks(out.get("gpu_live")))
            derived = self._derived.get(shape)
            if derived is None:
                derived = self._derive(gpus_of(out), location)
                if len(self._derived) >= 4096:
                    self._derived.clear()
                self._derived[shape] = derived
            out["gpu_keys"], out["summary"], contribution, indexes, irregular = derived
            out["bucket_stems"], out["index_keys"] = indexes[2], indexes[3]
            return out, indexes, irregular, contribution
        except (ValueError, TypeError, KeyError, AttributeError):
            # A damaged provider still comes back, outside the GPU indexes, rather than not at all.
            log.warning("restored provider has unreadable GPUs", extra={"provider_id": provider_id})
            entries = [(self.keys.location(location), 0)] if location else []
            out["bucket_stems"] = ""
            try:
                contribution = json.loads(out.get("summary") or "[]")
            except ValueError:
                contribution = []
            out["index_keys"] = " ".join(key for key, _ in entries)
            return out, (entries, [], "", out["index_keys"]), False, contribution

    def _derive(self, gpus: list[dict[str, Any]], location: str | None) -> tuple[Any, ...]:
        """Return what a restored provider's hash, indexes and counters take from its GPUs and location."""
        details = {"gpus": gpus, "location": location}
        gpu_keys = " ".join(gpu_token(gpu) for gpu in gpus)
        contribution = summary_contribution(details)
        buckets = gpu_buckets(self.keys, details)
        stems = " ".join(f"{index}:{vram}" for index, vram in buckets)
        # Restored providers are offline: their buckets are the offline ones (every member
        # scored by the VRAM), and each GPU index records the VRAM sizes present (member and
        # score the size).
        details_entries = index_entries(self.keys, details)
        entries = details_entries + [(Keys.bucket(index, vram, OFFLINE), vram) for index, vram in buckets]
        index_keys = " ".join(key for key, _ in details_entries)
        return (gpu_keys, dumps(contribution), contribution, (entries, buckets, stems, index_keys),
                is_irregular(gpu_keys, gpus))

    def restore_batch(self, hashes: list[tuple[str, dict[str, str]]], now_ms: int) -> list[Any]:
        """Return the restore script's arguments for a batch of (ID, snapshotted hash).

        Index members come grouped by hardware shape, and counters by field, for the whole
        batch (see restore.lua).
        """
        if len(hashes) > MAX_RESTORE_BATCH:
            raise ValueError(f"at most {MAX_RESTORE_BATCH} providers per restore call")
        providers: list[Any] = [len(hashes)]
        # Providers by their shape's indexes object (kept, so that its id is not reused):
        # (that object, their positions in the batch).
        shapes: dict[int, tuple[Any, list[int]]] = {}
        sizes: dict[tuple[str, int], None] = {}
        irregular_ids: list[str] = []
        counters: dict[str, int] = defaultdict(int)
        for position, (provider_id, fields) in enumerate(hashes, start=1):
            out, indexes, irregular, contribution = self.restored_hash(provider_id, fields, now_ms)
            providers += [provider_id, len(out), *chain.from_iterable(out.items())]
            shape = shapes.get(id(indexes))
            if shape is None:
                shape = shapes[id(indexes)] = (indexes, [])
                sizes.update(dict.fromkeys(indexes[1]))  # a size once per batch, not per provider
            shape[1].append(position)
            if irregular:
                irregular_ids.append(provider_id)
            for kind, name, n in contribution:
                counters[counter_field(OFFLINE, kind, name)] += n
        args = providers + [len(shapes)]
        for indexes, positions in shapes.values():
            args += [struct.pack(f">{len(positions)}H", *positions), len(indexes[0]),
                     *chain.from_iterable(indexes[0])]
        args.append(len(sizes))
        for index, vram in sizes:
            args += [index, vram]
        args += [len(irregular_ids), *irregular_ids, len(counters)]
        for name, n in counters.items():
            args += [name, n]
        return args

    def restore_writer(self) -> "RestoreWriter":
        """Return a writer that runs the restore script on batches, one call in flight."""
        return RestoreWriter(self)

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


class RestoreWriter:
    """Run restore.lua on batches from `restore_batch`, the next batch prepared meanwhile.

    `write` sends a call and returns at once; it waits only for the reply of the call before,
    so that Redis runs one batch while the caller prepares the next, without a thread: the
    call is packed by hiredis and written on a pooled connection, as `FunctionLibrary.call`
    does, rather than through redis-py's per-argument machinery (half of a restore's Python
    time for ~40 arguments a provider). A Redis Cluster client runs each call in turn.
    """

    def __init__(self, store: RestoreMixin) -> None:
        self.store = store
        self.written = 0
        self._script = store._restore
        self._pool = None if isinstance(store.redis, RedisCluster) else store.redis.connection_pool
        self._conn: Any = None
        self._pending: bytes | None = None

    def __enter__(self) -> "RestoreWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._release(clean=False)

    @wrap_errors
    def write(self, batch: list[Any]) -> None:
        """Send one batch; first wait for the call before it (raising its error)."""
        if self._pool is None:
            self.written += self.store.write_restored(batch)
            return
        ctx = self.store.ctx  # type: ignore[attr-defined]
        command = hiredis.pack_command(
            ("EVALSHA", self._script.sha, len(ctx.keys), *ctx.keys, *ctx.args, *batch)
        )
        self._receive()
        if self._conn is None:
            self._conn = self._pool.get_connection()
        self._conn.send_packed_command([command])
        self._pending = command

    @wrap_errors
    def close(self) -> int:
        """Wait for the last call; return how many providers the calls wrote."""
        self._receive()
        self._release(clean=True)
        return self.written

    def _receive(self) -> None:
        if self._pending is None:
            return
        command, self._pending = self._pending, None
        try:
            self.written += self._conn.read_response()
        except redis.exceptions.NoScriptError:
            # Redis restarted or flushed its scripts since the store registered them: the call
            # did nothing; load the script and send it again.
            self.store.redis.script_load(self._script.script)
            self._conn.send_packed_command([command])
            self.written += self._conn.read_response()
        except BaseException:
            self._release(clean=False)
            raise

    def _release(self, clean: bool) -> None:
        if self._conn is not None:
            if not clean:
                self._conn.disconnect()  # a reply may still be on its way
            self._pool.release(self._conn)
            self._conn = None
        self._pending = None
