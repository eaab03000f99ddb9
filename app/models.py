"""Plain records the store returns and the API serialises."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from .gpu_fragments import gpus_json
from .rules import effective_status

DETAIL_FIELDS = ("owner_id", "name", "hostname", "ip_address", "location")


def rfc3339(ms: int | None) -> str | None:
    """Format epoch milliseconds as RFC 3339 UTC with millisecond precision."""
    if ms is None:
        return None
    second, milli = divmod(ms, 1000)
    return f"{_rfc3339_second(second)}.{milli:03d}Z"


# Most timestamps of an answer or a page fall in a few seconds: strftime once for each.
@functools.lru_cache(maxsize=4096)
def _rfc3339_second(second: int) -> str:
    return datetime.fromtimestamp(second, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


@dataclass(slots=True)
class Provider:
    """A provider as stored, with its lease deadline; `status` is the stored status.

    The GPUs and the metadata stay the JSON text the store keeps: an answer embeds it as it
    is (orjson.Fragment), and `gpus` decodes the GPUs only when asked.
    """

    id: str
    owner_id: str
    name: str
    status: str
    gpus_json: str
    metadata_json: str
    registered_at_ms: int
    last_seen_at_ms: int | None
    lease_expires_at_ms: int | None
    hostname: str | None = None
    ip_address: str | None = None
    location: str | None = None
    version: int = 0
    claim_id: str | None = None
    claimant: str | None = None
    claim_expires_at_ms: int | None = None
    claim_confirmed: bool = False
    grace_until_ms: int | None = None

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> "Provider":
        """Build a provider from the fields of its Redis hash."""
        return cls(
            id=fields["id"],
            owner_id=fields["owner_id"],
            name=fields["name"],
            status=fields["status"],
            gpus_json=gpus_json(fields) or "[]",
            metadata_json=fields.get("metadata") or "{}",
            registered_at_ms=int(fields["registered_at"]),
            last_seen_at_ms=_int(fields.get("last_seen_at")),
            lease_expires_at_ms=_int(fields.get("lease_expires_at")),
            hostname=fields.get("hostname"),
            ip_address=fields.get("ip_address"),
            location=fields.get("location"),
            version=int(fields.get("version") or 0),
            claim_id=fields.get("claim_id"),
            claimant=fields.get("claimant"),
            claim_expires_at_ms=_int(fields.get("claim_expires_at")),
            claim_confirmed=fields.get("claim_confirmed") == "1",
            grace_until_ms=_int(fields.get("grace_until")),
        )

    @property
    def gpus(self) -> list[dict[str, Any]]:
        """The GPUs, decoded."""
        return orjson.loads(self.gpus_json)  # type: ignore[no-any-return]

    def lease_live(self, now_ms: int) -> bool:
        """Return whether the lease still runs at `now_ms`."""
        return self.status != "offline" and (self.lease_expires_at_ms or 0) > now_ms

    def claim_live(self, now_ms: int) -> bool:
        """Return whether a claim holds at `now_ms` (confirmed, or before its deadline)."""
        if self.claim_id is None or not self.lease_live(now_ms):
            return False
        return self.claim_confirmed or (self.claim_expires_at_ms or 0) > now_ms

    def effective_status(self, now_ms: int) -> str:
        """Return the status as of `now_ms`: deadlines count from the instant they pass."""
        return effective_status(
            self.status, self.lease_expires_at_ms, self.claim_id, self.claim_confirmed,
            self.claim_expires_at_ms, now_ms,
        )

    def liveness(self, now_ms: int) -> str:
        """Return `live`, `grace` (the lease runs on after an outage of the registry, and the
        daemon has not been heard since) or `offline`."""
        if not self.lease_live(now_ms):
            return "offline"
        return "live" if self.grace_until_ms is None else "grace"

    @property
    def etag(self) -> str:
        """Return the version as a strong entity tag."""
        return f'"{self.version}"'

    def to_json(self, now_ms: int) -> dict[str, Any]:
        """Return the provider as the API shows it, with its status as of `now_ms`.

        The GPUs and metadata are orjson Fragments: orjson (jsonify, the pages) writes their
        text as it is.
        """
        return {
            "id": self.id,
            "owner_id": self.owner_id,
            "name": self.name,
            "hostname": self.hostname,
            "ip_address": self.ip_address,
            "location": self.location,
            "status": self.effective_status(now_ms),
            "liveness": self.liveness(now_ms),
            "gpus": orjson.Fragment(self.gpus_json),
            "metadata": orjson.Fragment(self.metadata_json),
            "registered_at": rfc3339(self.registered_at_ms),
            "last_seen_at": rfc3339(self.last_seen_at_ms),
            "lease_expires_at": rfc3339(self.lease_expires_at_ms),
            "version": self.version,
            "claim": self._claim_json(now_ms),
        }

    def _claim_json(self, now_ms: int) -> dict[str, Any] | None:
        # The claim ID is the claimant's to tell; the registry shows who holds it and until when.
        if not self.claim_live(now_ms):
            return None
        return {
            "claimant": self.claimant,
            "confirmed": self.claim_confirmed,
            "expires_at": None if self.claim_confirmed else rfc3339(self.claim_expires_at_ms),
        }


@dataclass(frozen=True)
class Lease:
    """What a heartbeat answers: the provider's status and lease after it."""

    provider_id: str
    status: str
    last_seen_at_ms: int
    lease_expires_at_ms: int
    version: int
    now_ms: int

    @property
    def etag(self) -> str:
        return f'"{self.version}"'

    def to_json(self) -> dict[str, Any]:
        """Return the heartbeat's answer as the API shows it."""
        return {
            "id": self.provider_id,
            "status": self.status,
            "last_seen_at": rfc3339(self.last_seen_at_ms),
            "lease_expires_at": rfc3339(self.lease_expires_at_ms),
            "version": self.version,
        }


@dataclass(frozen=True)
class Page:
    """One page of a query: the providers, the total that matched, and the next cursor."""

    providers: list[Provider]
    total: int
    next_cursor: tuple[str, int | None] | None  # (last ID, its sort value)
    now_ms: int


@dataclass(frozen=True)
class Transition:
    """A stored status the sweeper changed because a lease or claim lapsed."""

    provider_id: str
    previous_status: str
    status: str


@dataclass(frozen=True)
class Filters:
    """What a query asks of a provider; GPU filters apply to each GPU.

    `gpu_model` and `architecture` match a substring of the name (case and spacing aside),
    the `_exact` ones the whole name.
    """

    gpu_model: str | None = None
    gpu_model_exact: str | None = None
    min_vram: int | None = None
    min_gpus: int = 1
    architecture: str | None = None
    architecture_exact: str | None = None
    healthy_only: bool = False
    statuses: tuple[str, ...] = field(default_factory=tuple)
    location: str | None = None
    sort: str = ""  # "", "vram", "gpus" or "last_seen"
    descending: bool = False
