"""Consul self-registration: one service per instance, kept registered, removed on stop.

Runs in the jobs process (one per instance, see runner), so a service ID is registered once,
not once per gunicorn worker. The agent being down never stops the registry from serving: the
loop retries with capped exponential backoff and logs one warning per outage.
"""
from __future__ import annotations

import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterator

import consul
import requests

from ..config import Settings, parse_duration, split_address

log = logging.getLogger(__name__)

# The local agent answers in milliseconds; a hung one must not hold up a shutdown for long.
AGENT_TIMEOUT_S = 3.0
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0
# A TTL check is passed three times per TTL, so one late report does not turn it critical.
TTL_REPORTS_PER_TTL = 3
# Documentation address (TEST-NET-1): a UDP connect() to it only consults the routing table.
_ROUTE_PROBE = "192.0.2.1"
_WILDCARDS = ("", "0.0.0.0", "::")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

AGENT_ERRORS = (consul.ConsulException, requests.RequestException)


@dataclass(frozen=True)
class ServiceDefinition:
    """What the instance registers: one service and its one check."""

    service_id: str
    name: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    check_id: str
    check: dict[str, Any] = field(repr=False)
    ttl_s: float | None = None

    def register(self, agent: consul.Consul) -> None:
        """Register the service with its check; raise if the agent refuses."""
        ok = agent.agent.service.register(
            self.name,
            service_id=self.service_id,
            address=self.address,
            port=self.port,
            tags=self.tags,
            meta=self.meta,
            check=self.check,
        )
        if not ok:
            raise consul.ConsulException(f"agent refused to register {self.service_id}")


def backoff_delays(initial_s: float = RETRY_INITIAL_S, max_s: float = RETRY_MAX_S) -> Iterator[float]:
    """Yield retry delays: `initial_s`, doubling each time, never more than `max_s`."""
    delay = initial_s
    while True:
        yield min(delay, max_s)
        delay = min(delay * 2, max_s)


def host_address(consul_host: str) -> str:
    """Return this host's address as others reach it.

    That is the source address of the route to the Consul agent, or of the default route when
    the agent is on loopback (an agent on the same host must not make the service advertise
    127.0.0.1 to the whole cluster); the hostname's address if there is no route.
    """
    targets = [] if _is_loopback(consul_host) else [consul_host]
    for target in [*targets, _ROUTE_PROBE]:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                address = probe.getsockname()[0]
        except OSError:
            continue
        if address and address != "0.0.0.0":
            return address
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def local_health_url(settings: Settings, bound_port: int) -> str:
    """Return the URL of this instance's own /health, as the jobs process reaches it."""
    host = "127.0.0.1" if settings.bind_host in _WILDCARDS else settings.bind_host
    return f"http://{_url_host(host)}:{bound_port}/health"


def service_definition(settings: Settings, bound_port: int, version: str) -> ServiceDefinition:
    """Build the registration of this instance from the settings and the port gunicorn bound."""
    _, consul_host, _ = split_address(settings.consul_address)
    address = settings.advertise_address or host_address(consul_host)
    port = settings.advertise_port or bound_port
    # Hostname and port name the instance: stable across its restarts, distinct between hosts.
    service_id = settings.service_id_prefix + _ID_UNSAFE.sub("-", f"{socket.gethostname()}-{port}")
    check_id = f"service:{service_id}"
    if settings.consul_check == "ttl":
        check = {
            **consul.Check.ttl(settings.consul_ttl),
            "DeregisterCriticalServiceAfter": settings.consul_deregister_after,
        }
        ttl_s: float | None = parse_duration(settings.consul_ttl)
        name = f"{settings.service_name} health (TTL, passed while /health answers 200)"
    else:
        check = consul.Check.http(
            f"http://{_url_host(address)}:{port}/health",
            settings.consul_check_interval,
            timeout=settings.consul_check_timeout,
            deregister=settings.consul_deregister_after,
        )
        ttl_s = None
        name = f"{settings.service_name} HTTP /health"
    return ServiceDefinition(
        service_id=service_id,
        name=settings.service_name,
        address=address,
        port=port,
        tags=list(settings.consul_tags),
        meta={"version": version},
        check_id=check_id,
        check={**check, "CheckID": check_id, "Name": name},
        ttl_s=ttl_s,
    )


def agent_client(settings: Settings) -> consul.Consul:
    """Build a client of the configured agent (a token comes from CONSUL_HTTP_TOKEN)."""
    scheme, host, port = split_address(settings.consul_address)
    return consul.Consul(host=host, port=port, scheme=scheme, connections_timeout=AGENT_TIMEOUT_S)


def probe_health(url: str, timeout_s: float) -> tuple[bool, str]:
    """GET the instance's /health; return whether it answered 200, and a note for Consul."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200, f"GET /health: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"GET /health: {exc.code} {exc.read(200).decode(errors='replace')}"
    except (OSError, ValueError) as exc:
        return False, f"GET /health failed: {exc}"


class ConsulRegistration:
    """Keep this instance registered in Consul until stopped, then deregister it once."""

    def __init__(
        self,
        settings: Settings,
        bound_port: int,
        version: str,
        *,
        retry_initial_s: float = RETRY_INITIAL_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self.settings = settings
        self.definition = service_definition(settings, bound_port, version)
        self.health_url = local_health_url(settings, bound_port)
        self.agent = agent_client(settings)
        self.resync_s = parse_duration(settings.consul_resync_interval)
        self.health_timeout_s = parse_duration(settings.consul_check_timeout)
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.registered = False
        self._outage = False
        self._healthy: bool | None = None
        self._next_resync = 0.0
        self._next_report = 0.0
        self._stop = threading.Event()

    @property
    def _fields(self) -> dict[str, Any]:
        return {"service_id": self.definition.service_id, "consul_address": self.settings.consul_address}

    def run(self) -> None:
        """Register, then keep the registration (and a TTL check) alive until `stop()`."""
        delays: Iterator[float] | None = None
        while not self._stop.is_set():
            try:
                wait = self.sync_once()
            except AGENT_ERRORS as exc:
                if not self._outage:
                    log.warning(
                        "consul agent unreachable; serving anyway and retrying",
                        extra={**self._fields, "error": str(exc)},
                    )
                self._outage = True
                delays = delays or backoff_delays(self.retry_initial_s, self.retry_max_s)
                wait = next(delays)
            except Exception:
                # A bug here must not end registration for the life of the instance.
                log.exception("consul registration loop failed; retrying", extra=self._fields)
                delays = delays or backoff_delays(self.retry_initial_s, self.retry_max_s)
                wait = next(delays)
            else:
                if self._outage:
                    log.info("consul agent reachable again", extra=self._fields)
                self._outage = False
                delays = None
            self._stop.wait(wait)
        self.deregister()

    def sync_once(self) -> float:
        """Do what is due now (register, check the agent, report health); return the wait."""
        now = time.monotonic()
        if not self.registered:
            self._register(now)
        elif now >= self._next_resync:
            # An agent restarted without its state forgets services registered over the API.
            if self.agent.agent.service_definition(self.definition.service_id) is None:
                log.warning("consul agent forgot the service; registering again", extra=self._fields)
                self._register(now)
            else:
                self._next_resync = now + self.resync_s
        if self.definition.ttl_s is not None and now >= self._next_report:
            self._report_health(now)
        due = [self._next_resync]
        if self.definition.ttl_s is not None:
            due.append(self._next_report)
        return max(0.0, min(due) - time.monotonic())

    def _register(self, now: float) -> None:
        self.definition.register(self.agent)
        self.registered = True
        self._next_resync = now + self.resync_s
        self._next_report = now  # A new TTL check is critical until its first report.
        self._healthy = None
        log.info(
            "registered in consul",
            extra={
                **self._fields,
                "service": self.definition.name,
                "address": self.definition.address,
                "port": self.definition.port,
                "check": self.settings.consul_check,
            },
        )

    def _report_health(self, now: float) -> None:
        healthy, note = probe_health(self.health_url, self.health_timeout_s)
        check = self.agent.agent.check
        reported = (check.ttl_pass if healthy else check.ttl_fail)(self.definition.check_id, notes=note)
        if not reported:
            # 404: the agent does not know the check any more; register again right away.
            log.warning("consul agent forgot the check; registering again", extra=self._fields)
            self._register(now)  # Reports again on the next pass, which is due at once.
            return
        if healthy != self._healthy:
            level = logging.INFO if healthy else logging.WARNING
            log.log(level, "consul TTL check %s", "passing" if healthy else "failing",
                    extra={**self._fields, "note": note})
        self._healthy = healthy
        assert self.definition.ttl_s is not None
        self._next_report = now + self.definition.ttl_s / TTL_REPORTS_PER_TTL

    def deregister(self) -> None:
        """Remove the service from the agent, if it was registered; never raise."""
        if not self.registered:
            return
        try:
            known = self.agent.agent.service.deregister(self.definition.service_id)
        except AGENT_ERRORS as exc:
            log.warning(
                "could not deregister from consul; it removes the service after "
                "consul_deregister_after",
                extra={**self._fields, "error": str(exc)},
            )
        else:
            log.info("deregistered from consul", extra={**self._fields, "agent_knew_it": known})
        self.registered = False

    def stop(self) -> None:
        """Ask the loop to deregister and end; it registers nothing after this."""
        self._stop.set()
