"""Turn a provider's Redis hash into a row of the `providers` table, in COPY's binary format.

The row keeps the whole hash, every field as it was, in `redis_hash` (JSON text: any string
survives, NUL included); the other columns are the analysts' view of it. Those columns hold
what PostgreSQL accepts: a NUL in a text column or inside JSON becomes U+FFFD there.

Binary rather than text COPY: text needs no escaping (a third of the Python time of a row in
text), and PostgreSQL neither unescapes the ~5 KB of a row nor parses its timestamps.
"""
from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import orjson

from ..gpu_fragments import gpus_json, gpus_of
from ..rules import effective_status_of_hash as effective_status
from ..store import canonical_name

log = logging.getLogger(__name__)

COLUMNS = (
    "id", "owner_id", "name", "hostname", "ip_address", "location", "status", "gpu_count",
    "gpus", "metadata", "registered_at", "last_seen_at", "lease_expires_at", "snapshot_at",
    "redis_hash", "digest",
)
COPY_SQL = f"COPY providers ({', '.join(COLUMNS)}) FROM STDIN (FORMAT binary)"
REPLACEMENT = "\ufffd"

# COPY's binary format: a signature and two empty 32-bit fields, then per row the number of
# columns and each column as a 32-bit length (-1: NULL) and the bytes of the type's binary
# form; a 16-bit -1 ends the data.
HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
_ROW = struct.pack(">h", len(COLUMNS))
_NULL = struct.pack(">i", -1)
_length = struct.Struct(">i").pack
_INT4 = _length(4)
_TEXT_COLUMNS = ("owner_id", "name", "hostname", "ip_address", "location")
_NO_DETAILS = (_NULL,) * len(_TEXT_COLUMNS)
_NO_DOCUMENTS = (_NULL,) * 5  # gpus, metadata and the three timestamps
_timestamp = struct.Struct(">iq").pack
# timestamptz counts microseconds from 2000-01-01 UTC; only years 1 to 9999 are kept, as the
# text form (and Python's datetime) has them.
_PG_EPOCH_MS = 946_684_800_000
_MIN_MS, _END_MS = -62_135_596_800_000, 253_402_300_800_000


def text_value(value: str | None) -> str | None:
    """Return a text column's value as PostgreSQL accepts it: a NUL becomes U+FFFD."""
    if value is not None and "\x00" in value:
        return value.replace("\x00", REPLACEMENT)
    return value


def _text(value: str | None) -> bytes:
    """Return a text column in COPY's binary format."""
    if value is None:
        return _NULL
    if "\x00" in value:
        value = value.replace("\x00", REPLACEMENT)
    data = value.encode()
    return _length(len(data)) + data


def _jsonb(value: str | None) -> bytes:
    """Return a jsonb column in COPY's binary format: a version byte, 1, then the JSON text."""
    if value is None:
        return _NULL
    if "\x00" in value:  # not JSON at all (an escaped NUL is handled by jsonb_text)
        value = value.replace("\x00", REPLACEMENT)
    data = value.encode()
    return _length(len(data) + 1) + b"\x01" + data


def epoch_ms(value: str | None) -> int | None:
    """Return a timestamp field (epoch ms) as an int; None when absent, invalid or out of range."""
    try:
        ms = int(value) if value else None
    except ValueError:
        return None
    if ms is None or not _MIN_MS <= ms < _END_MS:
        return None
    return ms


def _timestamptz(value: str | None) -> bytes:
    """Return a timestamptz column (from epoch ms) in COPY's binary format."""
    ms = epoch_ms(value)
    return _NULL if ms is None else _timestamp(8, (ms - _PG_EPOCH_MS) * 1000)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", REPLACEMENT)
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def jsonb_text(value: str | None, *, strict: bool = False) -> str | None:
    """Return JSON text that jsonb accepts: NUL escapes replaced; when strict, None if invalid."""
    if value is None:
        return None
    # jsonb refuses the escape \u0000; the cheap test may match an escaped backslash too.
    if "\\u0000" in value or strict:
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        value = json.dumps(_without_nul(parsed), separators=(",", ":"), ensure_ascii=False)
    return value


class Models:
    """Canonical GPU model of each GPU of a provider, for the counts.

    Read from the hash's `gpu_keys` (canonical "model|architecture" tokens) rather than by
    parsing its GPUs; providers share few distinct values, so each is decoded once.
    """

    def __init__(self) -> None:
        self._by_gpu_keys: dict[str, tuple[str, ...]] = {}

    def __call__(self, fields: dict[str, str]) -> tuple[str, ...]:
        gpu_keys = fields.get("gpu_keys")
        if gpu_keys is None:
            try:
                return tuple(unquote_plus(canonical_name(g["model_name"])) for g in gpus_of(fields))
            except (KeyError, TypeError, ValueError, AttributeError):
                return ()
        models = self._by_gpu_keys.get(gpu_keys)
        if models is None:
            if len(self._by_gpu_keys) > 100_000:
                self._by_gpu_keys.clear()
            models = tuple(unquote_plus(token.split("|", 1)[0]) for token in gpu_keys.split())
            self._by_gpu_keys[gpu_keys] = models
        return models


def _gpus_json(fields: dict[str, str]) -> str | None:
    """Return the GPU column: the list as the API shows it (a malformed one: None, NULL)."""
    try:
        return gpus_json(fields)
    except (orjson.JSONDecodeError, TypeError, AttributeError):
        return None


@dataclass
class Row:
    """A provider as read for a snapshot: enough to tell whether its row changed, and count it."""

    id: str
    fields: dict[str, str]
    status: str
    raw: bytes
    digest: bytes
    models: tuple[str, ...]


class RowBuilder:
    """Read providers into rows, and rows into COPY data, for one snapshot at `snapshot_at_ms`."""

    def __init__(self, snapshot_at_ms: int) -> None:
        self.models = Models()
        self.snapshot_at = _timestamptz(str(snapshot_at_ms))
        # The digest is personalised by the status: one keyed state per status, copied per row.
        self._hashers: dict[str, Any] = {}

    def read(self, provider_id: str, fields: dict[str, str], now_ms: int) -> Row:
        """Return the row of a provider's hash read at `now_ms`: its status, text and digest."""
        status = effective_status(fields, now_ms)
        # Sorted keys: the same hash gives the same text, whatever order HGETALL returned.
        raw = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
        hasher = self._hashers.get(status)
        if hasher is None:
            hasher = self._hashers[status] = hashlib.blake2b(digest_size=16, person=status.encode()[:16])
        hasher = hasher.copy()
        hasher.update(raw)
        return Row(provider_id, fields, status, raw, hasher.digest(), self.models(fields))

    def data(self, row: Row, *, strict: bool = False, minimal: bool = False) -> bytes:
        """Return the row in COPY's binary format (only the rows that changed need it).

        Args:
            strict: parse the JSON columns, so that invalid JSON becomes NULL.
            minimal: only the columns a restore needs (the last resort for an odd provider).
        """
        get = row.fields.get
        status = row.status.encode()
        parts = [_ROW, _text(row.id)]
        if minimal:
            parts += _NO_DETAILS
        else:
            for name in _TEXT_COLUMNS:
                parts.append(_text(get(name)))
        parts += (_length(len(status)), status, _INT4, _length(len(row.models)))
        if minimal:
            parts += _NO_DOCUMENTS
        else:
            parts += (
                _jsonb(jsonb_text(_gpus_json(row.fields), strict=strict)),
                _jsonb(jsonb_text(get("metadata"), strict=strict)),
                _timestamptz(get("registered_at")), _timestamptz(get("last_seen_at")),
                _timestamptz(get("lease_expires_at")),
            )
        parts += (self.snapshot_at, _length(len(row.raw)), row.raw, _length(len(row.digest)), row.digest)
        return b"".join(parts)


@dataclass
class Counts:
    """Providers and GPUs by status and by canonical GPU model (None: all models)."""

    # Providers by (status, models of their GPUs): few distinct keys, expanded at the end.
    kinds: Counter[tuple[str, tuple[str, ...]]] = field(default_factory=Counter)

    def add(self, row: Row) -> None:
        """Count one provider."""
        self.kinds[(row.status, row.models)] += 1

    def rows(self) -> list[tuple[str, str | None, int, int]]:
        """Return (status, gpu_model, providers, gpus) rows, sorted."""
        providers: Counter[tuple[str, str | None]] = Counter()
        gpus: Counter[tuple[str, str | None]] = Counter()
        for (status, models), n in self.kinds.items():
            providers[(status, None)] += n
            gpus[(status, None)] += n * len(models)
            for model in set(models):
                providers[(status, model)] += n
            for model in models:
                gpus[(status, model)] += n
        keys = sorted(providers, key=lambda k: (k[0], k[1] is not None, k[1] or ""))
        return [(status, model, providers[(status, model)], gpus[(status, model)]) for status, model in keys]

    @property
    def total_gpus(self) -> int:
        return sum(n * len(models) for (_, models), n in self.kinds.items())
