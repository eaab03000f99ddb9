"""The processes a bench run owns: private redis-servers and gunicorn instances on loopback."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """Return a loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _wait(check, what: str, timeout_s: float, process: subprocess.Popen[bytes]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes] | None, timeout_s: float = 25) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # The process group is ours (start_new_session): take the workers down with it.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class RedisProc:
    """A redis-server without persistence on a free loopback port."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.port = free_port()
        self.dir = workdir / f"redis-{name}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        """Start it and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = self.client()
        try:
            _wait(lambda: _pings(client), f"redis-server on port {self.port}", 10, self.process)
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_timeout=30)

    def stop(self) -> None:
        _stop(self.process, timeout_s=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Gunicorn:
    """One gunicorn instance (master, workers, and for the registry its jobs process)."""

    def __init__(
        self, name: str, config: str, app: str, env: dict[str, str], workdir: Path, cwd: Path = REPO
    ) -> None:
        self.name = name
        self.cwd = cwd
        self.port = free_port()
        self.config = config
        self.app = app
        self.log_path = workdir / f"gunicorn-{name}.log"
        self.env = {
            **os.environ,
            **env,
            # Each instance writes its own default config file instead of touching configs/.
            "REGISTRY_CONFIG": str(workdir / f"config-{name}.yaml"),
            "REGISTRY_PORT": str(self.port),
            "REGISTRY_BIND_HOST": HOST,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, ready_path: str, timeout_s: float = 60) -> None:
        """Start it and wait until `ready_path` answers 200."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", self.config, self.app],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait(lambda: _answers(self.base_url + ready_path), f"gunicorn {self.name}", timeout_s, self.process)

    def stop(self) -> None:
        _stop(self.process)
