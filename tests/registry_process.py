"""A real `provider-registry serve` (gunicorn master, workers, jobs process) for lifecycle tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from .conftest import ADMIN_KEY, TEST_API_KEYS
from .redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


class RegistryProcess:
    """One registry instance on an OS-chosen loopback port, logging JSON lines to a file."""

    def __init__(self, workdir: Path, redis_server: RedisServer, **settings: Any) -> None:
        self.workdir = workdir
        self.log_path = workdir / "registry.log"
        self.env = {
            **os.environ,
            "REGISTRY_CONFIG": str(workdir / "config.yaml"),
            "REGISTRY_BIND_HOST": "127.0.0.1",
            "REGISTRY_PORT": "0",
            "REGISTRY_WORKERS": "2",
            "REGISTRY_THREADS": "2",
            "REGISTRY_REDIS_URL": redis_server.url,
            # Auth stays on, as shipped: the test keys are configured and get() sends the admin's.
            "REGISTRY_API_KEYS": json.dumps(TEST_API_KEYS),
            "REGISTRY_ADVERTISE_ADDRESS": "127.0.0.1",
            # gunicorn's control socket defaults to one path per user; keep instances apart.
            "XDG_RUNTIME_DIR": str(workdir),
        }
        for key, value in settings.items():
            self.env[f"REGISTRY_{key.upper()}"] = str(value)
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 30.0) -> None:
        """Start the instance and wait until gunicorn has bound its port."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # So that cleanup can end the whole instance, jobs included.
        )
        log.close()
        startup = self.wait_for_log(lambda r: "bound_port" in r, timeout)
        assert startup is not None, f"registry did not start:\n{self.log_text()}"
        self.port = startup["bound_port"]
        # Also keeps teardown quick: a gevent worker signalled while it boots ignores SIGTERM
        # and is only killed after gunicorn's graceful timeout.
        self.wait_serving(timeout)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        """GET a path; return the status and the decoded JSON body."""
        try:
            request = urllib.request.Request(self.url(path), headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait_serving(self, timeout: float = 30.0) -> None:
        """Wait until a worker answers /health with 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.get("/health", timeout=2.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"registry never answered /health:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        """Return the JSON log lines written so far (other lines are skipped)."""
        out = []
        for line in self.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def messages(self, logger: str | None = None) -> list[str]:
        return [r.get("message", "") for r in self.records() if logger is None or r.get("logger") == logger]

    def wait_for_log(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any] | None:
        """Return the first log record matching `predicate`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records():
                if predicate(record):
                    return record
            if time.monotonic() > deadline or (self.process and self.process.poll() is not None):
                return None
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """End the whole instance at once (cleanup after a failed test)."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
