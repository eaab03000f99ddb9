"""Loading the Lua scripts, the arguments every script shares, and the error edge."""
from __future__ import annotations

import functools
import logging
from importlib import resources
from typing import Any, Callable, TypeVar

import redis
from redis.sentinel import MasterNotFoundError, SlaveNotFoundError

from ..errors import StoreTimeout, StoreUnavailable
from .keys import Keys

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


def load_script(client: redis.Redis, name: str, *libs: str) -> Any:
    """Register `name`.lua with the shared libraries prepended (always lib.lua first)."""
    lua = resources.files(__package__).joinpath("lua")
    parts = [lua.joinpath(f"{lib}.lua").read_text() for lib in ("lib", *libs)]
    parts.append(lua.joinpath(f"{name}.lua").read_text())
    return client.register_script("\n".join(parts))


def standalone_script(client: redis.Redis, name: str) -> Any:
    """Register `name`.lua alone: a script that takes only its own keys, none of lib.lua's."""
    return client.register_script(resources.files(__package__).joinpath("lua", f"{name}.lua").read_text())


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
