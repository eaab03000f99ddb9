"""Turn a provider's Redis hash into a row of the `providers` table, as a line of COPY text.

The row keeps the whole hash, every field as it was, in `redis_hash` (JSON text: any string
survives, NUL included); the other columns are the analysts' view of it. Those columns hold
what PostgreSQL accepts: a NUL in a text column or inside JSON becomes U+FFFD there.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import orjson

from ..rules import effective_status_of_hash as effective_status
from ..store import canonical_name

log = logging.getLogger(__name__)

COLUMNS = (
    "id", "owner_id", "name", "hostname", "ip_address", "location", "status", "gpu_count",
    "gpus", "metadata", "registered_at", "last_seen_at", "lease_expires_at", "snapshot_at",
    "redis_hash", "digest",
)
COPY_SQL = f"COPY providers ({', '.join(COLUMNS)}) FROM STDIN"
NULL = r"\N"
REPLACEMENT = "\ufffd"


def copy_text(value: str | None) -> str:
    """Escape a value for COPY's text format; a NUL, which PostgreSQL refuses, becomes U+FFFD."""
    if value is None:
        return NULL
    if "\x00" in value:
        value = value.replace("\x00", REPLACEMENT)
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\n" in value or "\r" in value or "\t" in value:
        value = value.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return value


def _text_columns(*values: str | None) -> str:
    """Return the values as tab-separated COPY text, escaping only when one needs it."""
    if None not in values:
        joined = "\t".join(values)  # type: ignore[arg-type]
        if not ("\\" in joined or "\n" in joined or "\r" in joined or "\x00" in joined) \
                and joined.count("\t") == len(values) - 1:
            return joined
    return "\t".join(copy_text(value) for value in values)


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


class Timestamps:
    """Format epoch milliseconds as timestamptz text, caching the per-second part."""

    def __init__(self) -> None:
        self._seconds: dict[int, str] = {}

    def __call__(self, value: str | None) -> str | None:
        try:
            ms = int(value) if value else None
        except ValueError:
            return None
        if ms is None:
            return None
        seconds, millis = divmod(ms, 1000)
        text = self._seconds.get(seconds)
        if text is None:
            if len(self._seconds) > 100_000:
                self._seconds.clear()
            try:
                moment = time.gmtime(seconds)
            except (OverflowError, OSError, ValueError):
                return None
            if not 1 <= moment.tm_year <= 9999:
                return None
            text = self._seconds[seconds] = time.strftime("%Y-%m-%d %H:%M:%S", moment)
        return f"{text}.{millis:03d}+00"


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
                return tuple(unquote_plus(canonical_name(g["model_name"])) for g in json.loads(fields["gpus"]))
            except (KeyError, TypeError, ValueError, AttributeError):
                return ()
        models = self._by_gpu_keys.get(gpu_keys)
        if models is None:
            if len(self._by_gpu_keys) > 100_000:
                self._by_gpu_keys.clear()
            models = tuple(unquote_plus(token.split("|", 1)[0]) for token in gpu_keys.split())
            self._by_gpu_keys[gpu_keys] = models
        return models


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
    """Read providers into rows, and rows into COPY text, for one snapshot at `snapshot_at_ms`."""

    def __init__(self, snapshot_at_ms: int) -> None:
        self.timestamps = Timestamps()
        self.models = Models()
        self.snapshot_at = self.timestamps(str(snapshot_at_ms))

    def read(self, provider_id: str, fields: dict[str, str], now_ms: int) -> Row:
        """Return the row of a provider's hash read at `now_ms`: its status, text and digest."""
        status = effective_status(fields, now_ms)
        # Sorted keys: the same hash gives the same text, whatever order HGETALL returned.
        raw = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.blake2b(raw, digest_size=16, person=status.encode()[:16]).digest()
        return Row(provider_id, fields, status, raw, digest, self.models(fields))

    def line(self, row: Row, *, strict: bool = False, minimal: bool = False) -> str:
        """Return the row as a line of COPY text (only the rows that changed need one).

        Args:
            strict: parse the JSON columns, so that invalid JSON becomes NULL.
            minimal: only the columns a restore needs (the last resort for an odd provider).
        """
        ts = self.timestamps
        get = row.fields.get
        if minimal:
            values = [copy_text(row.id), NULL, NULL, NULL, NULL, NULL, row.status,
                      str(len(row.models)), NULL, NULL, NULL, NULL, NULL]
        else:
            values = [
                _text_columns(row.id, get("owner_id"), get("name"), get("hostname"),
                              get("ip_address"), get("location")),
                row.status, str(len(row.models)),
                copy_text(jsonb_text(get("gpus"), strict=strict)),
                copy_text(jsonb_text(get("metadata"), strict=strict)),
                copy_text(ts(get("registered_at"))), copy_text(ts(get("last_seen_at"))),
                copy_text(ts(get("lease_expires_at"))),
            ]
        # The JSON of `raw` has no control characters left: only backslashes need escaping.
        values += [self.snapshot_at, row.raw.decode().replace("\\", "\\\\"), "\\\\x" + row.digest.hex()]
        return "\t".join(values) + "\n"


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
