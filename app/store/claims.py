"""Claims: a scheduler takes providers atomically, then renews, confirms or releases them."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ClaimMismatch, NoCapacity, ProviderNotFound
from ..models import Filters, Provider
from .providers import NOT_FOUND, TOKEN_MISMATCH, ProviderStore, token_mismatch
from .idempotency import fresh_uuid
from .scripts import load_script, pairs, wrap_errors

NO_CAPACITY, CLAIM_MISMATCH = -2, -4


@dataclass(frozen=True)
class Claim:
    """Providers granted together under one claim ID."""

    claim_id: str
    expires_at_ms: int
    providers: list[Provider]
    now_ms: int


class ClaimStore:
    """Atomic claims over the provider store's data and indexes."""

    def __init__(self, providers: ProviderStore) -> None:
        self.providers = providers
        client = providers.redis
        self._claim = load_script(client, "claim", "select")
        self._op = load_script(client, "claim_op")

    @wrap_errors
    def claim(self, filters: Filters, count: int, ttl_s: int, claimant: str) -> Claim:
        """Mark `count` live, idle, unclaimed matching providers busy under one new claim.

        Raises:
            NoCapacity: fewer than `count` are free; nothing was claimed.
        """
        store = self.providers
        claim_id = fresh_uuid("claim_id")
        code, now, *rest = store.run_script(
            self._claim,
            store.filter_keys(filters),
            [*store.filter_args(filters), count, ttl_s * 1000, claimant, claim_id],
            durable=True,
        )
        if code == NO_CAPACITY:
            matched, free = rest
            raise NoCapacity(
                f"{count} providers asked for, {free} free",
                details={"requested": count, "matched": matched, "free": free},
            )
        expires_at, *hashes = rest
        providers = [Provider.from_hash(pairs(flat)) for flat in hashes]
        return Claim(claim_id=claim_id, expires_at_ms=expires_at, providers=providers, now_ms=now)

    def renew(self, provider_id: str, claim_id: str) -> tuple[Provider, int]:
        """Extend an unconfirmed claim by its TTL, from now."""
        return self._apply(provider_id, "renew", claim_id)

    def confirm(self, provider_id: str, claim_id: str) -> tuple[Provider, int]:
        """Make a claim last until released or until the provider goes offline."""
        return self._apply(provider_id, "confirm", claim_id)

    def release(self, provider_id: str, claim_id: str, expected_token_hash: str = "") -> tuple[Provider, int]:
        """End a claim; the provider is idle again.

        Args:
            expected_token_hash: the SHA-256 of the daemon's own token when it releases, or ""
                when the caller's role allows it (a scheduler).
        """
        return self._apply(provider_id, "release", claim_id, expected_token_hash)

    @wrap_errors
    def _apply(
        self, provider_id: str, op: str, claim_id: str, expected_token_hash: str = ""
    ) -> tuple[Provider, int]:
        code, now, flat = self.providers.run_script(
            self._op, [], [provider_id, op, claim_id, expected_token_hash], durable=True
        )
        if code == NOT_FOUND:
            raise ProviderNotFound(provider_id)
        if code == TOKEN_MISMATCH:
            raise token_mismatch(provider_id)
        if code == CLAIM_MISMATCH:
            raise ClaimMismatch(f"claim {claim_id} is not the current claim of provider {provider_id}")
        return Provider.from_hash(pairs(flat)), now
