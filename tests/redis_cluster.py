"""A Redis Cluster of three primaries (each with a replica) on free ports in private dirs."""
from __future__ import annotations

import shutil
import subprocess
import time

import redis

from .redis_server import RedisServer, free_port


class RedisClusterNodes:
    """Six `redis-server --cluster-enabled yes` nodes joined by `redis-cli --cluster create`."""

    def __init__(self, primaries: int = 3, replicas_per_primary: int = 1) -> None:
        self.replicas_per_primary = replicas_per_primary
        self.nodes = [
            # The bus port defaults to the port + 10000, past 65535 for many free ports.
            RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "2000", "--cluster-port", str(free_port()))
            for _ in range(primaries * (1 + replicas_per_primary))
        ]

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH")
        subprocess.run(
            [cli, "--cluster", "create", *self.addresses,
             "--cluster-replicas", str(self.replicas_per_primary), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        deadline = time.monotonic() + 30
        while not all(self._ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster never reached cluster_state:ok")
            time.sleep(0.1)

    @staticmethod
    def _ok(node: RedisServer) -> bool:
        client = node.client()
        try:
            return client.cluster("info").get("cluster_state") == "ok"
        except redis.RedisError:
            return False
        finally:
            client.close()

    def primaries(self) -> list[redis.Redis]:
        out = []
        for node in self.nodes:
            client = node.client()
            if client.info("replication")["role"] == "master":
                out.append(client)
        return out

    def flush(self) -> None:
        """Empty every primary, and wait until their replicas are empty too."""
        for client in self.primaries():
            client.flushall()
            client.execute_command("WAIT", self.replicas_per_primary, 5000)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
