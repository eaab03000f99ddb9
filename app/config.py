"""Settings: defaults, then the YAML file, then `REGISTRY_<KEY>` variables, then overrides.

Every setting is declared once, in `Settings`; the loader derives the YAML defaults, the
environment variable names and the type checks from that declaration.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

import yaml

ENV_PREFIX = "REGISTRY_"
# REGISTRY_* variables that are not settings; any other one that names no setting stops startup.
NON_SETTING_ENV = {
    "REGISTRY_CONFIG": "path of the YAML configuration file",
    "REGISTRY_URL": "the registry the client library and the operator CLI talk to",
    "REGISTRY_KEY": "the service key the client library and the operator CLI send",
    "REGISTRY_TEST_PG_ADMIN_URL": "the tests' PostgreSQL server (tests/conftest.py)",
}
DEFAULT_CONFIG_PATH = "configs/config.yaml"
METRICS_AUTH = ("read", "metrics", "none")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Go loggers' spellings (logrus, zap), so that the original server's config loads as it is.
LOG_LEVEL_ALIASES = {
    "trace": "debug", "warn": "warning", "dpanic": "critical", "panic": "critical", "fatal": "critical",
}


class ConfigError(Exception):
    """A setting has a value the registry cannot run with."""


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Settings:
    """The registry's configuration; field metadata documents each key."""

    port: int = field(
        default=8002,
        metadata=_doc("HTTP port gunicorn binds; Go's \":8002\" and \"host:8002\" forms work too"),
    )
    bind_host: str = field(default="0.0.0.0", metadata=_doc("address gunicorn binds"))
    workers: int = field(default=2, metadata=_doc("gunicorn worker processes"))
    worker_class: str = field(
        default="gevent", metadata=_doc("gunicorn worker class: gevent (long polls wait cheaply), gthread or sync")
    )
    threads: int = field(default=8, metadata=_doc("threads per worker with worker_class gthread"))
    worker_connections: int = field(
        default=1000, metadata=_doc("connections each worker holds at once (gevent and gthread)")
    )
    body_timeout_s: float = field(
        default=10.0, metadata=_doc("seconds a request body may take to arrive before a 408")
    )
    log_level: str = field(
        default="info",
        metadata=_doc("debug, info, warning, error or critical; any case, and Go's warn, trace, fatal"),
    )
    redis_url: str = field(
        default=DEFAULT_REDIS_URL,
        metadata=_doc("the live store, one Redis server (empty or this default with redis_sentinels or redis_cluster_nodes)"),
    )
    redis_sentinels: list[str] = field(
        default_factory=list,
        metadata=_doc("Sentinel addresses (host:port): the primary is asked of them and followed through failovers; redis_url must then be empty"),
    )
    redis_master_name: str = field(
        default="", metadata=_doc("the primary's name in Sentinel (`sentinel monitor <name> ...`)")
    )
    redis_sentinel_password: str = field(
        default="", metadata=_doc("password of the sentinels themselves (requirepass of sentinel.conf)")
    )
    redis_cluster_nodes: list[str] = field(
        default_factory=list,
        metadata=_doc("Redis Cluster seed nodes (host:port); key_prefix must then hold a hash tag such as {registry}:, and redis_url must be empty"),
    )
    redis_password: str = field(
        default="", metadata=_doc("password of the data nodes with redis_sentinels or redis_cluster_nodes (redis_url carries its own)")
    )
    redis_wait_replicas: int = field(
        default=0,
        metadata=_doc("replicas that must hold a registration, update, claim or deregistration before it is answered (WAIT); 0: off"),
    )
    redis_wait_timeout_ms: int = field(
        default=500, metadata=_doc("how long a write waits for redis_wait_replicas; short of them it answers 503 store_timeout")
    )
    redis_read_from_replicas: bool = field(
        default=False,
        metadata=_doc("run read-only scripts (queries, summary, one provider) on a replica with EVALSHA_RO (Sentinel or Cluster)"),
    )
    redis_timeout_s: float = field(
        default=1.0, metadata=_doc("socket timeout for Redis calls; keeps /health fast")
    )
    key_prefix: str = field(default="registry:", metadata=_doc("prefix of every Redis key"))
    heartbeat_ttl_s: float = field(default=30.0, metadata=_doc("lease length"))
    heartbeat_interval_s: float = field(
        default=10.0, metadata=_doc("heartbeat rhythm advertised to daemons")
    )
    sweep_interval_s: float = field(
        default=0.5, metadata=_doc("how often the sweeper turns lapsed leases offline")
    )
    outage_grace_after_s: float = field(
        default=2.0,
        metadata=_doc("no serving process reached Redis for this long: the registry was blind, and each lease that lapsed meanwhile gets one more (0: off)"),
    )
    events_max_len: int = field(
        default=100_000, metadata=_doc("events kept in the change feed (approximately)")
    )
    consul_enabled: bool = field(
        default=True, metadata=_doc("register in Consul; an unreachable agent never stops serving")
    )
    consul_address: str = field(default="127.0.0.1:8500", metadata=_doc("Consul agent host:port"))
    service_name: str = field(default="provider-registry", metadata=_doc("name in Consul"))
    service_id_prefix: str = field(
        default="provider-registry-", metadata=_doc("Consul service ID prefix; <host>-<port> follows")
    )
    consul_tags: list[str] = field(default_factory=list, metadata=_doc("tags of the Consul service"))
    advertise_address: str = field(
        default="", metadata=_doc("address registered in Consul; empty: this host's address")
    )
    advertise_port: int = field(
        default=0, metadata=_doc("port registered in Consul; 0: the port gunicorn bound")
    )
    consul_check: str = field(
        default="http", metadata=_doc("http (Consul polls /health) or ttl (the instance reports)")
    )
    consul_check_interval: str = field(default="10s", metadata=_doc("HTTP check interval"))
    consul_check_timeout: str = field(default="2s", metadata=_doc("HTTP check timeout"))
    consul_deregister_after: str = field(
        default="1m", metadata=_doc("Consul removes the service after its check is critical this long")
    )
    consul_ttl: str = field(
        default="15s", metadata=_doc("TTL check: critical unless passed within this time")
    )
    consul_resync_interval: str = field(
        default="30s", metadata=_doc("how often to make sure the agent still knows the service")
    )
    database_url: str = field(default="", metadata=_doc("PostgreSQL URL for snapshots"))
    # Trust (authentication, authorisation, rate limits): see docs/SECURITY.md.
    auth_enabled: bool = field(
        default=True, metadata=_doc("require credentials; false only on a trusted network")
    )
    api_keys: list[dict[str, Any]] = field(
        default_factory=list,
        metadata=_doc("service keys: each {name, sha256 of the key, roles: [read|schedule|register|admin|metrics]}"),
    )
    api_keys_file: str = field(
        default="", metadata=_doc("YAML or JSON file with more service keys, in the api_keys shape")
    )
    metrics_auth: str = field(
        default="read",
        metadata=_doc("who may scrape /metrics: read (a read or metrics key), metrics (a metrics key only) or none (anyone)"),
    )
    rate_limit_enabled: bool = field(default=True, metadata=_doc("answer 429 past the limits below"))
    rate_limit_per_client: str = field(
        default="100/second", metadata=_doc("requests per client (service key or address)")
    )
    rate_limit_heartbeat: str = field(
        default="30/minute", metadata=_doc("accepted heartbeats and status changes per provider")
    )
    rate_limit_unauthenticated: str = field(
        default="10/second",
        metadata=_doc("requests answered 401 (no, a malformed or an unknown credential) per client address"),
    )
    idempotency_window_s: float = field(
        default=600.0, metadata=_doc("how long a write's Idempotency-Key and its answer are kept")
    )
    snapshot_interval_s: float = field(
        default=300.0, metadata=_doc("seconds between periodic snapshots; 0 turns them off")
    )
    snapshot_retention_days: int = field(
        default=90, metadata=_doc("days of snapshot history (counts) kept; 0 keeps it all")
    )
    restore_on_empty: bool = field(
        default=False, metadata=_doc("restore the latest snapshot when Redis holds none of the registry keys (at start and each snapshot interval)")
    )

    def bind_address(self) -> str:
        """Return the address gunicorn binds, `host:port` (an IPv6 host in brackets)."""
        host = f"[{self.bind_host}]" if ":" in self.bind_host else self.bind_host
        return f"{host}:{self.port}"

    def public_dict(self) -> dict[str, Any]:
        """Return the settings with passwords in URLs masked, for logs."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, str) and key.endswith("_url"):
                out[key] = mask_url(value)
            elif key.endswith("_password") and value:
                out[key] = "***"
        return out


def mask_url(url: str) -> str:
    """Replace the password of a URL with `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
# Annotations are strings under `from __future__ import annotations`.
_KINDS = {
    "bool": bool, "int": int, "float": float, "str": str, "list[str]": list,
    "list[dict[str, Any]]": dict,
}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _KINDS[_FIELDS[name].type]
    where = f"{name} (from {source})"
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        try:
            return int(str(value).strip()) if isinstance(value, str) else _exact_int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
        # "inf" and "nan" parse, then fail later with a traceback (int(inf)) or never compare.
        if not math.isfinite(number):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return number
    if kind is dict:
        # A list of mappings; from the environment as YAML or JSON text.
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip() else []
            except yaml.YAMLError:
                raise ConfigError(f"{where} must be YAML or JSON text") from None
        if isinstance(value, list) and all(isinstance(item, dict) for item in value):
            return value
        raise ConfigError(f"{where} must be a list of mappings")
    if kind is list:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        raise ConfigError(f"{where} must be a list of strings, got {value!r}")
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if name == "log_level":
        # "INFO", "Info" and Go's "warn" name the same levels as ours.
        level = str(value).strip().lower()
        return LOG_LEVEL_ALIASES.get(level, level)
    return str(value)


_DIGITS = re.compile(r"^[0-9]{1,5}$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def parse_port(value: Any, source: str) -> tuple[str, int]:
    """Return the host ("" for none) and port of a `port` setting.

    Takes a port number (8002, "8002") or a Go listen address as the original server's config
    wrote it: ":8002" (every interface) or "host:8002" ("127.0.0.1:8002", "[::1]:8002").

    Raises:
        ConfigError: anything else.
    """
    if not isinstance(value, str) or value.strip().isdigit():
        return "", _coerce("port", value, source)
    text = value.strip()
    host, colon, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid_host = _is_ipv6(host)
    else:
        # Go's SplitHostPort refuses "::1:8002" too: an IPv6 host needs its brackets.
        valid_host = host == "" or bool(_HOST_NAME.match(host))
    if not colon or not _DIGITS.match(port_text) or not valid_host:
        raise ConfigError(
            f"port (from {source}) must be a port number or a listen address such as "
            f"':8002' or '127.0.0.1:8002', got {value!r}"
        )
    return host, int(port_text)


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def _exact_int(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _check(settings: Settings) -> None:
    def bad(message: str) -> ConfigError:
        return ConfigError(message)

    # Port 0 lets the OS choose; Consul is then told the port gunicorn actually bound.
    if not 0 <= settings.port <= 65535:
        raise bad(f"port must be between 0 and 65535, got {settings.port}")
    if settings.workers < 1:
        raise bad(f"workers must be at least 1, got {settings.workers}")
    if settings.log_level not in LOG_LEVELS:
        raise bad(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {settings.log_level!r}")
    if not settings.key_prefix or any(c.isspace() for c in settings.key_prefix):
        raise bad(f"key_prefix must be non-empty and without spaces, got {settings.key_prefix!r}")
    _check_topology(settings)
    # Leases are kept in whole milliseconds; under 1 ms is a zero TTL that Redis refuses.
    if settings.heartbeat_ttl_s < 0.001:
        raise bad(f"heartbeat_ttl_s must be at least 0.001, got {settings.heartbeat_ttl_s}")
    if not 0 < settings.heartbeat_interval_s < settings.heartbeat_ttl_s:
        raise bad(
            "heartbeat_interval_s must be positive and shorter than heartbeat_ttl_s "
            f"(got {settings.heartbeat_interval_s} and {settings.heartbeat_ttl_s})"
        )
    if settings.sweep_interval_s <= 0:
        raise bad(f"sweep_interval_s must be positive, got {settings.sweep_interval_s}")
    if settings.redis_timeout_s <= 0:
        raise bad(f"redis_timeout_s must be positive, got {settings.redis_timeout_s}")
    if settings.worker_class not in ("gevent", "gthread", "sync"):
        raise bad(f"worker_class must be gevent, gthread or sync, got {settings.worker_class!r}")
    if settings.events_max_len < 1:
        raise bad(f"events_max_len must be at least 1, got {settings.events_max_len}")
    if settings.threads < 1:
        raise bad(f"threads must be at least 1, got {settings.threads}")
    if settings.worker_connections < 1:
        raise bad(f"worker_connections must be at least 1, got {settings.worker_connections}")
    if settings.body_timeout_s <= 0:
        raise bad(f"body_timeout_s must be positive, got {settings.body_timeout_s}")
    if settings.database_url and urlsplit(settings.database_url).scheme not in ("postgresql", "postgres"):
        raise bad(
            "database_url must be a postgresql:// URL or empty, "
            f"got {mask_url(settings.database_url)!r}"
        )
    if settings.idempotency_window_s < 1:
        raise bad(f"idempotency_window_s must be at least 1, got {settings.idempotency_window_s}")
    if settings.snapshot_interval_s < 0:
        raise bad(f"snapshot_interval_s must be 0 or more, got {settings.snapshot_interval_s}")
    if settings.snapshot_retention_days < 0:
        raise bad(f"snapshot_retention_days must be 0 or more, got {settings.snapshot_retention_days}")
    if settings.metrics_auth not in METRICS_AUTH:
        raise bad(f"metrics_auth must be one of {', '.join(METRICS_AUTH)}, got {settings.metrics_auth!r}")
    _check_consul(settings)
    _check_trust(settings)


def hash_tag(prefix: str) -> str | None:
    """Return the hash tag of a key prefix (`{registry}` of `{registry}:`), or None.

    Redis Cluster hashes only the text between the first `{` and the next `}` when it is not
    empty, so every key under such a prefix lands in one slot.
    """
    start = prefix.find("{")
    end = prefix.find("}", start + 1)
    if start < 0 or end < 0 or end == start + 1:
        return None
    return prefix[start : end + 1]


def split_host_port(address: str) -> tuple[str, int]:
    """Split `host:port` (`[v6]:port` too).

    Raises:
        ValueError: no host or no valid port.
    """
    host, colon, port = address.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not _DIGITS.match(port) or not 0 < int(port) <= 65535:
        raise ValueError(f"not host:port: {address!r}")
    return host, int(port)


def _check_topology(settings: Settings) -> None:
    """One way to find Redis: redis_url, redis_sentinels or redis_cluster_nodes."""
    given = [name for name in ("redis_sentinels", "redis_cluster_nodes") if getattr(settings, name)]
    if len(given) > 1:
        raise ConfigError("set redis_sentinels or redis_cluster_nodes, not both")
    if given:
        # The default URL is in every generated config file: it counts as not set.
        if settings.redis_url not in ("", DEFAULT_REDIS_URL):
            raise ConfigError(f"{given[0]} is set: redis_url must be empty or its default (it names one server)")
        for address in getattr(settings, given[0]):
            try:
                split_host_port(address)
            except ValueError:
                raise ConfigError(f"{given[0]} must be host:port addresses, got {address!r}") from None
    elif urlsplit(settings.redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"redis_url must be a redis://, rediss:// or unix:// URL, got {settings.redis_url!r}"
        )
    if settings.redis_sentinels and not settings.redis_master_name:
        raise ConfigError("redis_sentinels is set: redis_master_name must name the primary")
    if settings.redis_cluster_nodes and hash_tag(settings.key_prefix) is None:
        # The scripts touch many keys at once: a cluster runs them only within one slot.
        raise ConfigError(
            "redis_cluster_nodes is set: key_prefix must hold a hash tag, such as '{registry}:', "
            f"so that every key shares one slot; got {settings.key_prefix!r}"
        )
    if settings.redis_read_from_replicas and not (settings.redis_sentinels or settings.redis_cluster_nodes):
        raise ConfigError("redis_read_from_replicas needs redis_sentinels or redis_cluster_nodes (they name the replicas)")
    if settings.redis_wait_replicas < 0:
        raise ConfigError(f"redis_wait_replicas must be 0 or more, got {settings.redis_wait_replicas}")
    # WAIT's answer is read under the socket timeout: it must come before that.
    if settings.redis_wait_timeout_ms < 1 or (
        settings.redis_wait_replicas and settings.redis_wait_timeout_ms >= settings.redis_timeout_s * 1000
    ):
        raise ConfigError(
            "redis_wait_timeout_ms must be at least 1 and shorter than redis_timeout_s, "
            f"got {settings.redis_wait_timeout_ms} ms and {settings.redis_timeout_s} s"
        )


CONSUL_CHECKS = ("http", "ttl")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Return the seconds of a Go duration as Consul writes it ("10s", "1m", "1m30s", "500ms").

    Raises:
        ValueError: the text is not such a duration.
    """
    if not _DURATION.match(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))


def split_address(address: str) -> tuple[str, str, int]:
    """Split a Consul address, `host:port` or `scheme://host:port`, into its three parts.

    Raises:
        ValueError: no host or no valid port.
    """
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ValueError(f"not host:port: {address!r}")
    return parts.scheme, parts.hostname, parts.port


def _check_consul(settings: Settings) -> None:
    try:
        split_address(settings.consul_address)
    except ValueError:
        raise ConfigError(
            f"consul_address must be host:port, got {settings.consul_address!r}"
        ) from None
    if settings.consul_check not in CONSUL_CHECKS:
        raise ConfigError(
            f"consul_check must be one of {', '.join(CONSUL_CHECKS)}, got {settings.consul_check!r}"
        )
    if not 0 <= settings.advertise_port <= 65535:
        raise ConfigError(f"advertise_port must be between 0 and 65535, got {settings.advertise_port}")
    for name in ("consul_check_interval", "consul_check_timeout", "consul_deregister_after",
                 "consul_ttl", "consul_resync_interval"):
        value = getattr(settings, name)
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise ConfigError(f"{name} must be a duration such as 10s or 1m, got {value!r}") from None
        if seconds <= 0:
            raise ConfigError(f"{name} must be positive, got {value!r}")



# limits' own grammar ("100/second", "10 per minute", "2/second;30/minute"), checked here
# without importing it: the gunicorn master loads the settings before gevent patches anything.
_RATE = re.compile(
    r"^\s*[0-9]+\s*(/|\s+per\s+)\s*([0-9]+\s*)?(second|minute|hour|day|month|year)s?\s*$",
    re.IGNORECASE,
)


def _check_rate(name: str, value: str) -> None:
    if not value.strip() or not all(_RATE.match(part) for part in re.split(r"[,;|]", value)):
        raise ConfigError(f"{name} must be a rate limit such as '30/minute', got {value!r}")


def _check_trust(settings: Settings) -> None:
    # Imported here: keyring reads Settings, so config cannot import it at the top.
    from .keyring import load_service_keys

    load_service_keys(settings)
    _check_rate("rate_limit_per_client", settings.rate_limit_per_client)
    _check_rate("rate_limit_heartbeat", settings.rate_limit_heartbeat)
    _check_rate("rate_limit_unauthenticated", settings.rate_limit_unauthenticated)


def default_yaml() -> str:
    """Return the YAML text of the default configuration, one commented key a line."""
    lines = ["# provider-registry configuration; every key can be overridden by REGISTRY_<KEY>."]
    for f in dataclasses.fields(Settings):
        lines.append(f"# {f.metadata['doc']}")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        lines.append(yaml.safe_dump({f.name: default}, default_flow_style=False).strip())
    return "\n".join(lines) + "\n"


def _layer(items: Iterable[tuple[str, Any, str]]) -> dict[str, Any]:
    """Coerce one layer's (key, value, source) triples; a `port` naming a host sets bind_host.

    Raises:
        ConfigError: a bad value, or a `host:port` port and a bind_host in the same layer
            that disagree (no order between them would be the obvious winner).
    """
    layer: dict[str, Any] = {}
    port_host = port_source = ""
    for key, value, source in items:
        if key == "port":
            port_host, layer["port"] = parse_port(value, source)
            port_source = source
        else:
            layer[key] = _coerce(key, value, source)
    if port_host:
        if layer.get("bind_host", port_host) != port_host:
            raise ConfigError(
                f"port (from {port_source}) names host {port_host!r} "
                f"but bind_host is {layer['bind_host']!r}"
            )
        layer["bind_host"] = port_host
    return layer


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_env_names(env: Mapping[str, str]) -> None:
    """Refuse a `REGISTRY_*` variable that names no setting, as a typo would.

    Raises:
        ConfigError: naming the closest known variable.
    """
    known = [ENV_PREFIX + name.upper() for name in _FIELDS]
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in NON_SETTING_ENV and name not in known:
            # Compared without the prefix they all share, which would make any name look close.
            stems = [k.removeprefix(ENV_PREFIX) for k in [*known, *NON_SETTING_ENV]]
            close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), stems, n=1, cutoff=0.6)
            hint = f"; did you mean '{ENV_PREFIX}{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown environment variable {name}{hint} "
                f"(REGISTRY_<KEY> variables set settings; the others allowed are "
                f"{', '.join(sorted(NON_SETTING_ENV))})"
            )


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """Return the path of the YAML file: `REGISTRY_CONFIG` or `configs/config.yaml`."""
    env = os.environ if env is None else env
    return Path(env.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_CONFIG_PATH)


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load the settings in layers; write the default file when it is missing.

    Raises:
        ConfigError: a file that cannot be read or parsed, an unknown key, or a bad value.
    """
    env = os.environ if env is None else env
    path = Path(path) if path is not None else config_path(env)
    values: dict[str, Any] = {}

    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(default_yaml())
        except OSError as exc:
            raise ConfigError(f"cannot write default config {path}: {exc.strerror}") from None
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    for key in loaded:
        if key not in _FIELDS:
            raise ConfigError(f"unknown key {key!r} in {path}{_did_you_mean(str(key), _FIELDS)}")
    _check_env_names(env)
    values |= _layer((key, value, str(path)) for key, value in loaded.items())

    values |= _layer(
        (name, env[ENV_PREFIX + name.upper()], ENV_PREFIX + name.upper())
        for name in _FIELDS
        if ENV_PREFIX + name.upper() in env
    )

    for key in overrides or {}:
        if key not in _FIELDS:
            raise ConfigError(f"unknown setting {key!r}")
    values |= _layer((key, value, "overrides") for key, value in (overrides or {}).items())

    settings = Settings(**values)
    _check(settings)
    return settings
