"""Per-instance jobs: Consul registration by exactly one process of the instance.

An instance (one host and port) may be served by several processes (gunicorn's workers). An
exclusive `flock` on a file named by the host and port picks the one that registers: the
kernel frees it when its holder dies, however it dies, so another process takes over at its
next try; and it needs neither Redis (the instance stays in Consul through a Redis outage,
failing its check) nor anything from the server that started it. Under the package's gunicorn
settings the master takes the lock before it forks the workers and hands it to its jobs
process, which registers and leaves Consul first on stop (see gunicorn_conf); started any other
way, one worker takes it.
"""
from __future__ import annotations

import _socket  # the C module: gevent never patches it, and it leaves the descriptor's mode alone
import fcntl
import logging
import os
import re
import socket
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Settings

if TYPE_CHECKING:
    from .consul import ConsulRegistration

log = logging.getLogger(__name__)

# How often a process that does not hold the instance lock tries to take it.
TRY_S = 1.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def instance_lock_path(settings: Settings, port: int) -> Path:
    """Return the lock file of the instance serving `port` on this host."""
    name = _UNSAFE.sub("-", f"{settings.service_id_prefix}{socket.gethostname()}-{port}")
    return Path(tempfile.gettempdir()) / f"{name}.lock"


def listening_port(default: int) -> int:
    """Return the port of a TCP socket this process listens on (a gunicorn worker inherits
    its master's), else `default`."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return default
    for name in names:
        try:
            sock = _socket.socket(fileno=int(name))
        except (OSError, ValueError):
            continue  # not a socket, or the descriptor of the listing itself
        try:
            if (
                sock.family in (_socket.AF_INET, _socket.AF_INET6)
                and sock.type == _socket.SOCK_STREAM
                and sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN)
            ):
                return int(sock.getsockname()[1])
        except OSError:
            pass
        finally:
            sock.detach()  # the descriptor belongs to the server
    return default


class InstanceLock:
    """An exclusive, non-blocking `flock` on `path`, held until released or the process ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; return whether this one holds it."""
        if self.fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        """Let another process take the lock."""
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor of the file releases the flock
            self.fd = None


class InstanceRegistration:
    """Register the instance in Consul from this process once it holds the instance lock."""

    def __init__(self, settings: Settings, version: str) -> None:
        self.settings = settings
        self.version = version
        self.registration: "ConsulRegistration | None" = None
        self._lock: InstanceLock | None = None
        self._stop = threading.Event()

    def run(self) -> None:
        """Try the lock every second; once held, keep the instance registered until `stop()`."""
        # Asked here, not at start: some servers open their listening socket after loading the app.
        port = listening_port(self.settings.port)
        self._lock = InstanceLock(instance_lock_path(self.settings, port))
        while not self._stop.is_set():
            try:
                held = self._lock.try_acquire()
            except OSError as exc:
                log.warning("instance lock unusable; not registering in consul",
                            extra={"path": str(self._lock.path), "error": str(exc)})
                return
            if held:
                break
            self._stop.wait(TRY_S)
        else:
            return
        from .consul import ConsulRegistration  # Not at the top: the gunicorn master imports this module.

        log.info("this process registers the instance in consul", extra={"port": port, "pid": os.getpid()})
        self.registration = ConsulRegistration(self.settings, port, self.version)
        if not self._stop.is_set():
            self.registration.run()  # returns once stopped, deregistered
        self._lock.release()

    def stop(self) -> None:
        """Deregister (if registered) and end."""
        self._stop.set()
        if self.registration is not None:
            self.registration.stop()
