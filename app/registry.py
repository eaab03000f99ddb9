"""The registry's per-app objects: settings, Redis client and store, reachable from a request."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from limits import parse_many

from .config import Settings, parse_duration
from .connections import Client, Topology
from .store import CapacityStore, ClaimStore, EventFeed, Keys, ProviderStore
from .store.replication import Replication
from .store.idempotency import IdempotencyStore
from .version import package_version

EXTENSION = "provider_registry"


# The longest long poll of the event feed, in seconds.
MAX_WAIT_S = 30


def redis_client(
    settings: Settings, socket_timeout: float | None = None, connect_timeout: float | None = None
) -> Client:
    """Build a client of the primary that fails fast, so that an outage is a quick 503, not a hang."""
    return Topology(settings).primary(socket_timeout, connect_timeout)


def health_timeout_s(settings: Settings) -> float:
    """Return the Redis timeout of /health: with its one retry, half Consul's check timeout."""
    return min(settings.redis_timeout_s, parse_duration(settings.consul_check_timeout) / 4)


def in_flight_s(settings: Settings) -> float:
    """Return how long an attempt under an Idempotency-Key may run before a retry takes over.

    A request makes at most a few Redis calls, each bounded by the timeout; taking over
    earlier is still safe (the first attempt's write is fenced), only wasteful.
    """
    return max(1.0, 5 * settings.redis_timeout_s)


def heartbeat_limits(settings: Settings) -> list[tuple[int, float]]:
    """Return the per-provider heartbeat limits as (amount, window s); none when limits are off.

    The heartbeat script counts them in the provider's hash (app/ratelimit.py says why).
    """
    if not settings.rate_limit_enabled:
        return []
    return [(item.amount, item.get_expiry()) for item in parse_many(settings.rate_limit_heartbeat)]


@dataclass
class Registry:
    """Everything a request needs, built once per app."""

    settings: Settings
    topology: Topology
    redis: Client
    blocking_redis: Client
    # /health's own client: a hung Redis must not make Consul's check time out instead of fail.
    health_redis: Client
    store: ProviderStore
    claims: ClaimStore
    events: EventFeed
    capacity: CapacityStore
    idempotency: IdempotencyStore
    version: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "Registry":
        """Connect lazily to Redis and build the stores."""
        keys = Keys(settings.key_prefix)
        topology = Topology(settings)
        client = topology.primary()
        # Long polls block in XREAD: their connections need a timeout past the longest wait.
        blocking = topology.primary(socket_timeout=MAX_WAIT_S + settings.redis_timeout_s + 5)
        store = ProviderStore(
            client, keys, settings.heartbeat_ttl_s, settings.events_max_len,
            blind_after_s=settings.outage_grace_after_s,
            replicas=Replication(
                settings.redis_wait_replicas, settings.redis_wait_timeout_ms, topology.replica()
            ),
            heartbeat_limits=heartbeat_limits(settings),
            heartbeat_limit_text=settings.rate_limit_heartbeat,
        )
        return cls(
            settings=settings,
            topology=topology,
            redis=client,
            blocking_redis=blocking,
            health_redis=topology.primary(health_timeout_s(settings), health_timeout_s(settings)),
            store=store,
            claims=ClaimStore(store),
            events=EventFeed(client, blocking, keys),
            capacity=CapacityStore(store),
            idempotency=IdempotencyStore(
                client, keys, settings.idempotency_window_s, in_flight_s(settings)
            ),
            version=package_version(),
        )

    def rhythm(self) -> dict[str, float]:
        """Return the heartbeat rhythm daemons are told."""
        return {
            "heartbeat_interval_s": self.settings.heartbeat_interval_s,
            "heartbeat_ttl_s": self.settings.heartbeat_ttl_s,
        }

    def close(self) -> None:
        """Close the Redis connections."""
        self.store.close()
        self.redis.close()
        self.blocking_redis.close()
        self.health_redis.close()
        if self.store.replicas.reader is not None:
            self.store.replicas.reader.close()


def current_registry() -> Registry:
    """Return the registry of the app handling the current request."""
    return current_app.extensions[EXTENSION]
