"""Where the registry's Redis is: one server, a primary watched by Sentinel, or a Cluster.

Every client the registry builds (requests, long polls, /health, the jobs) and the rate
limiter's storage come from one `Topology`, so that they all follow the same primary. With
Sentinel, redis-py asks the sentinels for the primary's address whenever it opens a connection
and drops connections to a primary that was demoted: a failover needs no restart.
"""
from __future__ import annotations

from typing import Any, Union

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from .config import Settings, split_host_port

Client = Union[redis.Redis, RedisCluster]


class FailFastSentinelConnection(SentinelManagedConnection):
    """A Sentinel connection that is dropped when a reply times out, like a plain one.

    redis-py's SentinelManagedConnection reads with `disconnect_on_error=False` by default, so
    a timed-out command's late reply stayed in the socket and the pooled connection handed it
    to the next command (measured: replies of other commands, under load, after a failover).
    """

    def read_response(self, *args: Any, disconnect_on_error: bool = True, **kwargs: Any) -> Any:
        return super().read_response(*args, disconnect_on_error=disconnect_on_error, **kwargs)


class Topology:
    """Builds clients for the Redis deployment that the settings name."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sentinel: Sentinel | None = None
        if settings.redis_sentinels:
            timeout = settings.redis_timeout_s
            sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
            if settings.redis_sentinel_password:
                sentinel_kwargs["password"] = settings.redis_sentinel_password
            self.sentinel = Sentinel(
                [split_host_port(address) for address in settings.redis_sentinels],
                sentinel_kwargs=sentinel_kwargs,
            )

    @property
    def kind(self) -> str:
        """Return "sentinel", "cluster" or "single"."""
        if self.settings.redis_sentinels:
            return "sentinel"
        if self.settings.redis_cluster_nodes:
            return "cluster"
        return "single"

    def _options(self, socket_timeout: float | None, connect_timeout: float | None) -> dict[str, Any]:
        settings = self.settings
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": socket_timeout or settings.redis_timeout_s,
            "socket_connect_timeout": connect_timeout or settings.redis_timeout_s,
            # One immediate retry replaces a pooled connection that died with a restarted (or
            # failed-over) Redis. Never on a timeout: the command was sent and may still run,
            # and sending a write again would apply it twice.
            "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            "health_check_interval": 30,
        }
        if settings.redis_password and self.kind != "single":
            options["password"] = settings.redis_password
        return options

    def primary(self, socket_timeout: float | None = None, connect_timeout: float | None = None) -> Client:
        """Return a client of the primary that fails fast: an outage is a quick 503, not a hang."""
        options = self._options(socket_timeout, connect_timeout)
        if self.sentinel is not None:
            return self.sentinel.master_for(
                self.settings.redis_master_name, connection_class=FailFastSentinelConnection, **options
            )
        if self.kind == "cluster":
            return self._cluster(options, replicas=False)
        return redis.Redis.from_url(self.settings.redis_url, **options)

    def replica(self) -> Client | None:
        """Return a client of the replicas for read-only scripts, or None when reads stay on the primary.

        With Sentinel, connections go to the replicas Sentinel lists as up, in turn, and to the
        primary when none is. With a Cluster, reads go to the replicas of the registry's slot.
        """
        if not self.settings.redis_read_from_replicas:
            return None
        options = self._options(None, None)
        if self.sentinel is not None:
            return self.sentinel.slave_for(
                self.settings.redis_master_name, connection_class=FailFastSentinelConnection, **options
            )
        if self.kind == "cluster":
            return self._cluster(options, replicas=True)
        return None

    def _cluster(self, options: dict[str, Any], replicas: bool) -> RedisCluster:
        from redis.cluster import LoadBalancingStrategy

        nodes = [ClusterNode(*split_host_port(address)) for address in self.settings.redis_cluster_nodes]
        # The cluster client retries by itself after MOVED and reconnects to the new owner.
        options.pop("health_check_interval", None)
        if replicas:
            options["load_balancing_strategy"] = LoadBalancingStrategy.ROUND_ROBIN_REPLICAS
        return RedisCluster(startup_nodes=nodes, **options)

    def rate_limit_storage(self, primary: Client) -> tuple[str, dict[str, Any]]:
        """Return the `limits` storage URI and options that reach this deployment.

        A single Redis shares the registry's own pool; Sentinel and Cluster storages build
        their own clients (limits' `redis+sentinel://` and `redis+cluster://`) with the same
        timeouts, and count on the primary only (a replica's lag would let bursts through).
        """
        settings = self.settings
        timeouts = {
            "socket_timeout": settings.redis_timeout_s,
            "socket_connect_timeout": settings.redis_timeout_s,
        }
        if self.kind == "single":
            assert isinstance(primary, redis.Redis)
            return settings.redis_url, {"connection_pool": primary.connection_pool}
        auth = {"password": settings.redis_password} if settings.redis_password else {}
        if self.kind == "sentinel":
            # limits would send the data nodes' password to the sentinels too: say theirs.
            sentinel_kwargs: dict[str, Any] = {**timeouts, "password": settings.redis_sentinel_password or None}
            uri = f"redis+sentinel://{','.join(settings.redis_sentinels)}/{settings.redis_master_name}"
            return uri, {
                **timeouts, **auth, "use_replicas": False, "sentinel_kwargs": sentinel_kwargs,
                # limits passes these on to master_for: its connections drop late replies too.
                "connection_class": FailFastSentinelConnection,
            }
        return f"redis+cluster://{','.join(settings.redis_cluster_nodes)}", {**timeouts, **auth}
