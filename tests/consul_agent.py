"""A Consul agent double: the agent endpoints the registry uses, over real HTTP, on loopback.

No Consul binary is available on these machines, so tests talk to this instead. It follows the
request and response shapes of Consul's documented HTTP API (keys matched case-insensitively,
as the agent does), runs HTTP checks itself (2xx passing, 429 warning, anything else critical),
expires TTL checks, and can be stopped, restarted empty (an agent that forgot its services) or
made to answer 500. It does not reap critical services after `DeregisterCriticalServiceAfter`.
"""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from app.config import parse_duration

NODE = "agent-double"
DATACENTER = "dc1"


@dataclass
class Call:
    """One request the agent received."""

    at: float
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class CheckState:
    """A check as the agent holds it."""

    check_id: str
    name: str
    service_id: str
    service_name: str
    definition: dict[str, Any]
    status: str = "critical"
    output: str = ""
    updated: float = field(default_factory=time.monotonic)
    next_run: float = 0.0

    @property
    def kind(self) -> str:
        if "http" in self.definition:
            return "http"
        if "ttl" in self.definition:
            return "ttl"
        return "unknown"


def _folded(value: Any) -> Any:
    """Return a JSON object with lower-cased keys, recursively, as Consul matches them."""
    if isinstance(value, dict):
        return {str(k).lower().replace("_", ""): _folded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_folded(v) for v in value]
    return value


class BadRequest(Exception):
    """The agent answers 400 with this text."""


class ConsulAgent:
    """A threaded HTTP server on 127.0.0.1 that behaves like a Consul agent's HTTP API."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.calls: list[Call] = []
        self.services: dict[str, dict[str, Any]] = {}
        self.checks: dict[str, CheckState] = {}
        self.failing = False
        self.index = 1
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # Lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on the agent's port (the same across restarts) and run its checks."""
        agent = self

        class Handler(_Handler):
            pass

        Handler.agent = agent
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True),
            threading.Thread(target=self._run_checks, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop answering (connections are refused), keeping what the agent knows."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def restart_empty(self) -> None:
        """Restart as an agent that lost its state: no services, no checks."""
        self.stop()
        with self._lock:
            self.services.clear()
            self.checks.clear()
            self.index += 1
        self.start()

    # Views for assertions ----------------------------------------------------------------

    def requests(self, method: str | None = None, prefix: str = "") -> list[Call]:
        """Return the calls received, optionally only those of `method` under `prefix`."""
        with self._lock:
            return [
                c for c in self.calls
                if (method is None or c.method == method) and c.path.startswith(prefix)
            ]

    def registrations(self) -> list[Call]:
        return self.requests("PUT", "/v1/agent/service/register")

    def deregistrations(self) -> list[Call]:
        return self.requests("PUT", "/v1/agent/service/deregister/")

    def check(self, check_id: str) -> CheckState | None:
        with self._lock:
            check = self.checks.get(check_id)
            if check is not None:
                self._expire(check)
            return check

    def passing(self, name: str) -> list[dict[str, Any]]:
        """Return what `/v1/health/service/<name>?passing` returns."""
        return self.health_service(name, passing_only=True)

    # Agent behaviour ---------------------------------------------------------------------

    def register_service(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise BadRequest("Request decode failed: expected an object")
        raw = _folded(body)
        name = raw.get("name")
        if not name:
            raise BadRequest("Missing service name")
        service_id = raw.get("id") or name
        definitions = list(raw.get("checks") or [])
        if raw.get("check"):
            definitions.append(raw["check"])
        checks = []
        for n, definition in enumerate(definitions, start=1):
            if "ttl" in definition:
                parse_or_400(definition["ttl"], "TTL")
            elif "http" in definition:
                if "interval" not in definition:
                    raise BadRequest("Interval must be > 0 for Script, HTTP, H2PING, or TCP checks")
                parse_or_400(definition["interval"], "Interval")
                if "timeout" in definition:
                    parse_or_400(definition["timeout"], "Timeout")
            else:
                raise BadRequest("Check is not valid: must have TTL, HTTP or another check type")
            if "deregistercriticalserviceafter" in definition:
                parse_or_400(definition["deregistercriticalserviceafter"], "DeregisterCriticalServiceAfter")
            default_id = f"service:{service_id}" if len(definitions) == 1 else f"service:{service_id}:{n}"
            checks.append(
                CheckState(
                    check_id=definition.get("checkid") or definition.get("id") or default_id,
                    name=definition.get("name") or f"Service '{name}' check",
                    service_id=service_id,
                    service_name=name,
                    definition=definition,
                    status=definition.get("status") or "critical",
                )
            )
        service = {
            "ID": service_id,
            "Service": name,
            "Tags": list(raw.get("tags") or []),
            "Meta": dict(body.get("Meta") or body.get("meta") or {}),
            "Port": int(raw.get("port") or 0),
            "Address": raw.get("address") or "",
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": bool(raw.get("enabletagoverride")),
            "Datacenter": DATACENTER,
        }
        with self._lock:
            # Registering an ID again replaces the service and its checks, as the agent does.
            self._drop_checks(service_id)
            self.services[service_id] = service
            for check in checks:
                self.checks[check.check_id] = check
            self.index += 1

    def deregister_service(self, service_id: str) -> bool:
        with self._lock:
            if service_id not in self.services:
                return False
            del self.services[service_id]
            self._drop_checks(service_id)
            self.index += 1
            return True

    def update_ttl(self, check_id: str, status: str, note: str) -> bool:
        with self._lock:
            check = self.checks.get(check_id)
            if check is None or check.kind != "ttl":
                return False
            check.status, check.output, check.updated = status, note, time.monotonic()
            self.index += 1
            return True

    def health_service(self, name: str, passing_only: bool) -> list[dict[str, Any]]:
        with self._lock:
            entries = []
            for service in self.services.values():
                if service["Service"] != name:
                    continue
                checks = [self._node_check()] + [
                    self._check_json(c) for c in self.checks.values() if c.service_id == service["ID"]
                ]
                if passing_only and any(c["Status"] != "passing" for c in checks):
                    continue
                entries.append({"Node": self._node_json(), "Service": self._service_json(service), "Checks": checks})
            return entries

    # Internals ---------------------------------------------------------------------------

    def _drop_checks(self, service_id: str) -> None:
        for check_id in [k for k, c in self.checks.items() if c.service_id == service_id]:
            del self.checks[check_id]

    def _expire(self, check: CheckState) -> None:
        if check.kind == "ttl" and check.status != "critical":
            ttl = parse_duration(check.definition["ttl"])
            if time.monotonic() - check.updated > ttl:
                check.status, check.output = "critical", "TTL expired"

    def _run_checks(self) -> None:
        """Run due HTTP checks, the first one right after registration, as the agent does."""
        while not self._stop.wait(0.05):
            now = time.monotonic()
            with self._lock:
                due = [c for c in self.checks.values() if c.kind == "http" and c.next_run <= now]
                for check in due:
                    check.next_run = now + parse_duration(check.definition["interval"])
            for check in due:
                status, output = _http_probe(check.definition)
                with self._lock:
                    if self.checks.get(check.check_id) is check:
                        check.status, check.output, check.updated = status, output, time.monotonic()

    def _node_json(self) -> dict[str, Any]:
        return {
            "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
            "Node": NODE,
            "Address": "127.0.0.1",
            "Datacenter": DATACENTER,
            "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
            "Meta": {},
        }

    def _node_check(self) -> dict[str, Any]:
        return {
            "Node": NODE, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
            "Notes": "", "Output": "Agent alive and reachable", "ServiceID": "", "ServiceName": "",
            "ServiceTags": [], "Type": "",
        }

    def _check_json(self, check: CheckState) -> dict[str, Any]:
        self._expire(check)
        service = self.services.get(check.service_id, {})
        return {
            "Node": NODE, "CheckID": check.check_id, "Name": check.name, "Status": check.status,
            "Notes": check.definition.get("notes", ""), "Output": check.output,
            "ServiceID": check.service_id, "ServiceName": check.service_name,
            "ServiceTags": service.get("Tags", []), "Type": check.kind,
        }

    @staticmethod
    def _service_json(service: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in service.items() if k != "Datacenter"}


def parse_or_400(value: Any, what: str) -> float:
    try:
        return parse_duration(str(value))
    except ValueError:
        raise BadRequest(f"Invalid {what}: time: invalid duration {value!r}") from None


def _http_probe(definition: dict[str, Any]) -> tuple[str, str]:
    timeout = parse_duration(definition["timeout"]) if "timeout" in definition else 10.0
    url = definition["http"]
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (OSError, ValueError) as exc:
        return "critical", f"Get {url!r}: {exc}"
    status = "passing" if 200 <= code < 300 else "warning" if code == 429 else "critical"
    return status, f"HTTP GET {url}: {code}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    agent: ConsulAgent
    # HTTP/1.0 closes each connection after its response, so a stopped agent is really gone
    # (a kept-alive connection would otherwise keep answering after the listener closed).
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base signature
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            body = raw.decode(errors="replace")
        agent = self.agent
        with agent._lock:
            agent.calls.append(Call(time.monotonic(), method, path, query, body))
        if agent.failing:
            return self._send(500, "rpc error making call: No cluster leader")
        try:
            self._route(method, path, query, body)
        except BadRequest as exc:
            self._send(400, str(exc))

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> None:
        agent = self.agent
        if method == "PUT" and path == "/v1/agent/service/register":
            agent.register_service(body)
            return self._send(200, "")
        if method == "PUT" and path.startswith("/v1/agent/service/deregister/"):
            service_id = path.removeprefix("/v1/agent/service/deregister/")
            if agent.deregister_service(service_id):
                return self._send(200, "")
            return self._send(
                404, f'Unknown service ID "{service_id}". Ensure that the service ID is passed, not the service name.'
            )
        if method == "GET" and path == "/v1/agent/services":
            with agent._lock:
                return self._json({k: dict(v) for k, v in agent.services.items()})
        if method == "GET" and path.startswith("/v1/agent/service/"):
            service_id = path.removeprefix("/v1/agent/service/")
            with agent._lock:
                service = agent.services.get(service_id)
                if service is None:
                    return self._send(404, f"unknown service ID: {service_id}")
                return self._json({**service, "ContentHash": f"{hash(json.dumps(service, sort_keys=True)) & 0xffffffff:08x}"})
        for verb, status in (("pass", "passing"), ("warn", "warning"), ("fail", "critical")):
            prefix = f"/v1/agent/check/{verb}/"
            if method == "PUT" and path.startswith(prefix):
                check_id = path.removeprefix(prefix)
                note = query.get("note", [""])[0]
                if agent.update_ttl(check_id, status, note):
                    return self._send(200, "")
                return self._send(404, f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the check name.')
        if method == "GET" and path.startswith("/v1/health/service/"):
            name = path.removeprefix("/v1/health/service/")
            return self._json(agent.health_service(name, passing_only="passing" in query))
        self._send(404, "")

    def _json(self, value: Any) -> None:
        self._send(200, json.dumps(value), content_type="application/json")

    def _send(self, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        # py-consul's health calls read the index; the agent always sends these three.
        self.send_header("X-Consul-Index", str(self.agent.index))
        self.send_header("X-Consul-Knownleader", "true")
        self.send_header("X-Consul-Lastcontact", "0")
        self.end_headers()
        self.wfile.write(data)
