"""A primary, its replica and three sentinels on free ports in private dirs, for failover tests."""
from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import redis

from .redis_server import RedisServer, free_port, redis_server_binary

MASTER_NAME = "registry"


class SentinelServer:
    """One `redis-server --sentinel` watching `MASTER_NAME`."""

    def __init__(self, master_port: int, down_after_ms: int, failover_timeout_ms: int) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="registry-test-sentinel-"))
        # Sentinel rewrites its file (what it learns of replicas and peers): it must own one.
        (self.dir / "sentinel.conf").write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [redis_server_binary(), str(self.dir / "sentinel.conf"), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=1)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class ReplicatedRedis:
    """A primary, its replicas and three sentinels (quorum 2), as docs/DEPLOYMENT.md deploys them."""

    def __init__(self, down_after_ms: int = 1000, failover_timeout_ms: int = 2000, replicas: int = 1) -> None:
        self.primary = RedisServer()
        self.replicas = [
            RedisServer("--replicaof", "127.0.0.1", str(self.primary.port)) for _ in range(replicas)
        ]
        self.replica = self.replicas[0]
        self.sentinels = [
            SentinelServer(self.primary.port, down_after_ms, failover_timeout_ms) for _ in range(3)
        ]

    @property
    def addresses(self) -> str:
        """The sentinels as the `redis_sentinels` setting takes them from the environment."""
        return ",".join(s.address for s in self.sentinels)

    def start(self) -> None:
        """Start the data nodes, wait for the replica to sync, then the sentinels to see both."""
        self.primary.start()
        for replica in self.replicas:
            replica.start()
            wait_for(lambda: replica.client().info("replication").get("master_link_status") == "up",
                     "a replica never synced")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_for(self._sentinels_ready, "the sentinels never saw the replica and each other")

    def _sentinels_ready(self) -> bool:
        try:
            for sentinel in self.sentinels:
                master = sentinel.client().sentinel_master(MASTER_NAME)
                if int(master["num-slaves"]) < len(self.replicas) or int(master["num-other-sentinels"]) < 2:
                    return False
            return True
        except redis.RedisError:
            return False

    def master_port(self) -> int | None:
        """Return the port the sentinels name as the primary now (None when none answers)."""
        for sentinel in self.sentinels:
            try:
                return int(sentinel.client().sentinel_get_master_addr_by_name(MASTER_NAME)[1])
            except (redis.RedisError, TypeError):
                continue
        return None

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for replica in self.replicas:
            replica.stop()
        self.primary.stop()


def wait_for(predicate, message: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.05)
