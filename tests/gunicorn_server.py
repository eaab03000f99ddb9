"""The registry under a real gunicorn, configured through REGISTRY_* variables."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from .redis_server import free_port


class GunicornServer:
    """One registry instance: a gunicorn master, its workers and its jobs process."""

    def __init__(self, redis_url: str, **settings: object) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="registry-test-gunicorn-"))
        self.env = {
            **os.environ,
            "REGISTRY_CONFIG": str(self.dir / "config.yaml"),
            "REGISTRY_PORT": str(self.port),
            "REGISTRY_BIND_HOST": "127.0.0.1",
            "REGISTRY_REDIS_URL": redis_url,
            # Never register test instances with whatever Consul agent this machine may run.
            "REGISTRY_CONSUL_ENABLED": "false",
            # These servers test scheduling under load from bare clients on one address;
            # trust is tested in-process (tests/test_auth.py). A test may turn both back on.
            "REGISTRY_AUTH_ENABLED": "false",
            "REGISTRY_RATE_LIMIT_ENABLED": "false",
            **{f"REGISTRY_{key.upper()}": str(value) for key, value in settings.items()},
        }
        self.log_path = self.dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> None:
        """Start gunicorn and wait until /health answers."""
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "python:app.gunicorn_conf", "app.wsgi:app"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log()}")
            try:
                if requests.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"gunicorn did not become healthy: {self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the master and wait for it to exit; return its exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
