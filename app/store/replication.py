"""Which node a script runs on: acknowledged writes wait for replicas, reads may use replicas.

The store's scripts all pass through `Replication.run` (ProviderStore.run_script): the one
place that decides primary or replica, and that adds `WAIT` after an acknowledged write.

- An acknowledged write (registration, update, claim and its steps, deregistration, token
  rotation) runs on one pinned connection of the primary, then `WAIT numreplicas timeout` on
  the same connection (WAIT counts the replicas that acknowledged that connection's last write).
  Short of the replicas asked for, the write stays applied on the primary but may be lost in a
  failover: the answer is 503 `store_timeout` ("outcome unknown"), like a timeout after the
  command was sent. Under an Idempotency-Key the write's reply is already recorded, so a retry
  rebuilds the same answer, after waiting for the replicas again.
- Heartbeats do not wait: a lost renewal costs nothing while outage grace holds.
- A read-only script (query, summary, one provider) runs on a replica with EVALSHA_RO when a
  replica client is configured, with outage grace off (its check may write; the primary's next
  pulse grants it). A query whose filters need scratch keys (a write) runs on the primary.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from ..errors import StoreTimeout
from .idempotency import run_script as run_fenced

log = logging.getLogger(__name__)

# What Redis answers when a read-only script reaches a write command (the scratch keys of
# some queries): the script did nothing, and runs again on the primary.
READ_ONLY_REFUSAL = "Write commands are not allowed from read-only scripts"


class ReplicasBehind(StoreTimeout):
    """A write was applied on the primary but fewer replicas than asked acknowledged it."""

    def __init__(self, wanted: int, acknowledged: int, timeout_ms: int) -> None:
        super().__init__(
            f"the write reached {acknowledged} of the {wanted} replicas asked for within "
            f"{timeout_ms} ms, so a failover could lose it: retry with the same "
            "Idempotency-Key to learn its outcome"
        )
        self.wanted, self.acknowledged = wanted, acknowledged


@dataclass
class Replication:
    """How the store uses replicas: `wait_replicas` for acknowledged writes, `reader` for reads."""

    wait_replicas: int = 0
    wait_timeout_ms: int = 500
    # A client of the replicas (Sentinel's slave_for, or a Cluster reading from replicas).
    reader: Any = None

    def run(
        self, primary: Any, script: Any, keys: list[str], args: list[Any],
        durable: bool = False, read_only_args: list[Any] | None = None,
    ) -> Any:
        """Run a store script on the node its kind calls for.

        Args:
            durable: an acknowledged write: wait for `wait_replicas` replicas.
            read_only_args: the arguments to send to a replica instead of `args` (outage grace
                off), for a script that only reads; None for a script that may write.
        Raises:
            ReplicasBehind: a durable write was acknowledged by too few replicas.
        """
        if read_only_args is not None and self.reader is not None:
            try:
                return self._read(script, keys, read_only_args)
            except redis.ResponseError as exc:
                if READ_ONLY_REFUSAL not in str(exc):
                    raise
        if not durable or self.wait_replicas <= 0:
            return run_fenced(script, keys, args)
        return self._acknowledged(primary, script, keys, args)

    def _read(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return self.reader.evalsha_ro(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # SCRIPT LOAD is not replicated: each replica learns a script on first use (a
            # cluster client sends it to primaries only unless told every node).
            if isinstance(self.reader, RedisCluster):
                self.reader.execute_command("SCRIPT LOAD", script.script, target_nodes=RedisCluster.ALL_NODES)
            else:
                self.reader.script_load(script.script)
            return self.reader.evalsha_ro(script.sha, len(keys), *keys, *args)

    def _acknowledged(self, primary: Any, script: Any, keys: list[str], args: list[Any]) -> Any:
        node = primary
        if isinstance(primary, RedisCluster):
            # Every registry key is in one slot: its primary runs the script and the WAIT.
            node = primary.get_redis_connection(primary.get_node_from_key(keys[0]))
        pinned = redis.Redis(connection_pool=node.connection_pool, single_connection_client=True)
        try:
            reply = run_fenced(script, keys, args, via=pinned)
            acknowledged = int(pinned.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms))
        except (redis.ConnectionError, redis.exceptions.MovedError):
            if isinstance(primary, RedisCluster):
                # The slot moved (a failover): learn the new owner for the next request.
                primary.nodes_manager.initialize()
            raise
        finally:
            pinned.close()
        if acknowledged < self.wait_replicas:
            log.warning(
                "write not acknowledged by enough replicas",
                extra={"wanted": self.wait_replicas, "acknowledged": acknowledged,
                       "timeout_ms": self.wait_timeout_ms},
            )
            raise ReplicasBehind(self.wait_replicas, acknowledged, self.wait_timeout_ms)
        return reply
