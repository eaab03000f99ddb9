"""A Python client of the registry's HTTP API, with a provider daemon and a scheduler on top.

    from app.client import RegistryClient
    registry = RegistryClient("http://registry:8002", key="...")
    registry.list_providers(gpu_model="a100", status=["idle"], limit=50)

Every route has a method. An error answer raises `ApiError` (or a subclass) carrying the JSON
error's `code`, message and details. Writes carry an `Idempotency-Key`, kept across retries, so
a retry after a timeout is applied once; retries back off exponentially and honour
`Retry-After` (429, 503, 409 idempotency_in_progress). Needs `requests`: install
`provider-registry[client]`. The URL and key default to `REGISTRY_URL` and `REGISTRY_KEY`.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import requests

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8002"
URL_ENV, KEY_ENV = "REGISTRY_URL", "REGISTRY_KEY"
# Answers worth retrying: the write was not applied, or its outcome is learnt by retrying it.
_RETRY_STATUSES = {429, 502, 503, 504}
_RETRY_CODES = {"idempotency_in_progress"}


class ApiError(Exception):
    """An error answer of the registry: its HTTP status, machine `code`, message and details."""

    def __init__(self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.retry_after_s = retry_after_s


class NotFound(ApiError):
    """404: no such provider (`provider_not_found`), or no such route."""


class Unauthorized(ApiError):
    """401: no credential, or one that is not valid for this request."""


class Forbidden(ApiError):
    """403: the credential lacks the role (details name the roles that would do)."""


class Conflict(ApiError):
    """409: `no_capacity`, `claim_mismatch`, or `idempotency_in_progress`."""


class PreconditionFailed(ApiError):
    """412: If-Match named a version the provider no longer has (`version_mismatch`)."""


class Unavailable(ApiError):
    """503: `store_unavailable` (nothing applied) or `store_timeout` (outcome unknown)."""


class RegistryUnreachable(Exception):
    """No answer from the registry at all (connection refused, timed out), after the retries."""


_ERRORS: dict[int, type[ApiError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 412: PreconditionFailed, 503: Unavailable,
}


def _retry_after(response: requests.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def error_of(response: requests.Response) -> ApiError:
    """Turn an error answer into the exception of its status, with the body's code."""
    try:
        body = response.json()
        code, message, details = body["code"], body["error"], body.get("details") or {}
    except (ValueError, KeyError, TypeError):
        code, message, details = f"http_{response.status_code}", response.text[:200], {}
    cls = _ERRORS.get(response.status_code, ApiError)
    return cls(response.status_code, code, message, details, _retry_after(response))


class RegistryClient:
    """One registry's API, as a service key or a provider token sees it."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout_s: float = 10.0,
        retries: int = 4,
        backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        """Talk to `url` (else $REGISTRY_URL, else 127.0.0.1:8002) with `key` (else $REGISTRY_KEY)."""
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self.key = key if key is not None else os.environ.get(KEY_ENV) or None
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.session = session or requests.Session()

    def with_credential(self, secret: str | None) -> "RegistryClient":
        """Return a client of the same registry sending another credential (a provider token)."""
        return RegistryClient(
            self.url, secret or "", timeout_s=self.timeout_s, retries=self.retries,
            backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s, session=self.session,
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self.session.close()

    # -- transport ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        timeout_s: float | None = None,
    ) -> requests.Response:
        """Send a request, retrying what is safe to retry; return a 2xx answer or raise.

        Args:
            idempotent: send an Idempotency-Key (kept over the retries); by default on every
                write. A write without one is retried only when it was surely not applied.
        Raises:
            ApiError: the registry answered with an error (after the retries, if retryable).
            RegistryUnreachable: no answer after the retries.
        """
        sent = dict(headers or {})
        if self.key:
            sent["Authorization"] = f"Bearer {self.key}"
        write = method.upper() not in ("GET", "HEAD", "OPTIONS")
        if idempotent is None:
            idempotent = write
        if idempotent and write:
            sent.setdefault("Idempotency-Key", str(uuid.uuid4()))
        attempt = 0
        while True:
            try:
                response = self.session.request(
                    method, self.url + path, json=json, params=params, headers=sent,
                    timeout=timeout_s or self.timeout_s,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                # A write that may have reached the server is retried only under its key.
                surely_not_sent = isinstance(exc, requests.ConnectTimeout) or (
                    isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.ReadTimeout)
                    and "Connection refused" in str(exc)
                )
                if attempt >= self.retries or (write and not idempotent and not surely_not_sent):
                    raise RegistryUnreachable(f"{method} {self.url}{path}: {exc}") from exc
                self._sleep(attempt, None)
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            error = error_of(response)
            retryable = response.status_code in _RETRY_STATUSES or error.code in _RETRY_CODES
            if error.code == "store_timeout" and write and not idempotent:
                retryable = False  # the write may have been applied; only a key tells
            if not retryable or attempt >= self.retries:
                raise error
            self._sleep(attempt, error.retry_after_s)
            attempt += 1

    def _sleep(self, attempt: int, retry_after_s: float | None) -> None:
        backoff = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
        time.sleep(max(backoff, retry_after_s or 0.0))

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    # -- the routes --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """GET /health: whether the instance can serve (raises Unavailable on 503)."""
        return self._json("GET", "/health")

    def openapi(self) -> dict[str, Any]:
        """GET /openapi.json: the API contract."""
        return self._json("GET", "/openapi.json")

    def metrics(self) -> str:
        """GET /metrics: Prometheus text."""
        return self.request("GET", "/metrics").text

    def register(
        self, details: Mapping[str, Any], *, provider_id: str | None = None, status: str | None = None
    ) -> dict[str, Any]:
        """POST /providers: register (or re-register `provider_id`); the answer holds the token once."""
        body = dict(details)
        if provider_id is not None:
            body["id"] = provider_id
        if status is not None:
            body["status"] = status
        return self._json("POST", "/providers", json=body)

    def heartbeat(
        self,
        provider_id: str,
        *,
        status: str | None = None,
        gpu_metrics: list[Mapping[str, Any]] | None = None,
        if_match: str | None = None,
    ) -> dict[str, Any]:
        """POST /providers/{id}/heartbeat: renew the lease; optionally set the status and live metrics."""
        body: dict[str, Any] = {}
        if status is not None:
            body["status"] = status
        if gpu_metrics is not None:
            body["gpu_metrics"] = list(gpu_metrics)
        return self._json("POST", f"/providers/{provider_id}/heartbeat", json=body, headers=_if_match(if_match))

    def set_status(self, provider_id: str, status: str, *, if_match: str | None = None) -> dict[str, Any]:
        """PUT /providers/{id}/status: set the status (and renew the lease)."""
        return self._json("PUT", f"/providers/{provider_id}/status", json={"status": status},
                          headers=_if_match(if_match))

    def update(self, provider_id: str, details: Mapping[str, Any], *, if_match: str | None = None) -> dict[str, Any]:
        """PUT /providers/{id}: replace the provider's details."""
        return self._json("PUT", f"/providers/{provider_id}", json=dict(details), headers=_if_match(if_match))

    def get(self, provider_id: str) -> dict[str, Any]:
        """GET /providers/{id}: the provider, with its effective status and version."""
        return self._json("GET", f"/providers/{provider_id}")

    def delete(self, provider_id: str, *, if_match: str | None = None) -> None:
        """DELETE /providers/{id}: deregister the provider."""
        self.request("DELETE", f"/providers/{provider_id}", headers=_if_match(if_match))

    def rotate_token(self, provider_id: str) -> str:
        """POST /providers/{id}/token: a new token for the provider; the old one stops working."""
        # The route takes no Idempotency-Key: a lost answer would lose the new token.
        return self._json("POST", f"/providers/{provider_id}/token", idempotent=False)["provider_token"]

    def list_providers(self, *, limit: int | None = None, cursor: str | None = None, **filters: Any) -> list[dict[str, Any]]:
        """GET /providers: the providers matching `filters` (one page with `limit`, else all).

        Filters: gpu_model, gpu_model_exact, min_vram, min_gpus, architecture,
        architecture_exact, healthy_only, status (a list), location, sort.
        """
        params = _query(filters, limit=limit, cursor=cursor)
        return self._json("GET", "/providers", params=params)

    def iter_providers(self, *, page_size: int = 200, **filters: Any) -> Iterator[dict[str, Any]]:
        """Yield every provider matching `filters`, a page at a time (following the Link header)."""
        params = _query(filters, limit=page_size)
        path: str | None = "/providers"
        while path is not None:
            response = self.request("GET", path, params=params)
            yield from response.json()
            following = response.links.get("next", {}).get("url")
            path, params = (_path_of(following), None) if following else (None, None)

    def summary(self) -> dict[str, Any]:
        """GET /providers/summary: providers by status, GPUs and VRAM by model and location."""
        return self._json("GET", "/providers/summary")

    def events(self, after: str | None = None, wait_s: float = 0) -> dict[str, Any]:
        """GET /providers/events: events after `after`, waiting up to `wait_s` (≤ 30) for one.

        Without `after`: no events, only the position to ask from next.
        """
        params: dict[str, Any] = {}
        if after is not None:
            params = {"after": after, "wait": wait_s}
        return self._json("GET", "/providers/events", params=params, timeout_s=self.timeout_s + wait_s)

    def claim(self, count: int = 1, *, claim_ttl_s: int = 60, claimant: str = "", **filters: Any) -> dict[str, Any]:
        """POST /providers/claim: take `count` idle providers matching `filters`, all or none."""
        body = {"count": count, "claim_ttl_s": claim_ttl_s, **filters}
        if claimant:
            body["claimant"] = claimant
        return self._json("POST", "/providers/claim", json=body)

    def renew_claim(self, provider_id: str, claim_id: str) -> dict[str, Any]:
        """POST /providers/{id}/claim/renew: extend an unconfirmed claim by its TTL."""
        return self._json("POST", f"/providers/{provider_id}/claim/renew", json={"claim_id": claim_id})

    def confirm_claim(self, provider_id: str, claim_id: str) -> dict[str, Any]:
        """POST /providers/{id}/claim/confirm: the job started; the claim lasts until released."""
        return self._json("POST", f"/providers/{provider_id}/claim/confirm", json={"claim_id": claim_id})

    def release(self, provider_id: str, claim_id: str) -> dict[str, Any]:
        """POST /providers/{id}/release: end the claim; the provider is idle again."""
        return self._json("POST", f"/providers/{provider_id}/release", json={"claim_id": claim_id})


def _if_match(version: str | int | None) -> dict[str, str]:
    if version is None:
        return {}
    text = str(version)
    return {"If-Match": text if text.startswith('"') or text == "*" else f'"{text}"'}


def _query(filters: Mapping[str, Any], **extra: Any) -> list[tuple[str, Any]]:
    params: list[tuple[str, Any]] = []
    for name, value in {**filters, **extra}.items():
        if value is None or value == [] or value is False and name == "healthy_only":
            continue
        if isinstance(value, (list, tuple)):
            params += [(name, item) for item in value]
        else:
            params.append((name, str(value).lower() if isinstance(value, bool) else value))
    return params


def _path_of(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


# -- a provider daemon ----------------------------------------------------------------------


class ProviderDaemon:
    """Keep one provider registered and its lease renewed at the rhythm the registry advertises.

    Registers with the client's credential (a `register` key), then heartbeats with the
    provider's own token. When the registry no longer knows the provider (404, e.g. an admin
    deregistered it or Redis lost its data), registers it again under the same ID.

        daemon = ProviderDaemon(RegistryClient(url, register_key), details)
        daemon.start(); ...; daemon.stop()
    """

    def __init__(
        self,
        client: RegistryClient,
        details: Mapping[str, Any],
        *,
        provider_id: str | None = None,
        token: str | None = None,
        metrics: Callable[[], list[Mapping[str, Any]] | None] | None = None,
    ) -> None:
        self.client = client
        self.details = dict(details)
        self.provider_id = provider_id
        self.token = token
        self.metrics = metrics
        self.interval_s = 10.0
        self.registrations = 0
        self.heartbeats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self) -> dict[str, Any]:
        """Register (again, under the kept ID); keep the token and the advertised rhythm."""
        if self.provider_id is not None and self.token:
            try:
                answer = self.client.with_credential(self.token).register(self.details, provider_id=self.provider_id)
            except (Unauthorized, NotFound):
                answer = self.client.register(self.details, provider_id=self.provider_id)
        else:
            answer = self.client.register(self.details, provider_id=self.provider_id)
        self.provider_id = answer["id"]
        self.token = answer.get("provider_token", self.token)
        self.interval_s = float(answer.get("heartbeat_interval_s", self.interval_s))
        self.registrations += 1
        return answer

    def beat(self) -> dict[str, Any]:
        """Send one heartbeat; register again if the registry no longer knows the provider."""
        if self.provider_id is None or not self.token:
            self.register()
        assert self.provider_id is not None
        try:
            answer = self.client.with_credential(self.token).heartbeat(
                self.provider_id, gpu_metrics=self.metrics() if self.metrics else None
            )
        except (NotFound, Unauthorized) as exc:
            # Gone (404), or re-created by someone else with another token (401): register anew.
            log.warning("provider unknown to the registry; registering again", extra={"code": exc.code})
            self.register()
            answer = self.client.with_credential(self.token).heartbeat(self.provider_id)
        self.interval_s = float(answer.get("heartbeat_interval_s", self.interval_s))
        self.heartbeats += 1
        return answer

    def run(self) -> None:
        """Heartbeat until `stop()`; errors are logged and retried at the next beat."""
        while not self._stop.is_set():
            try:
                self.beat()
            except (ApiError, RegistryUnreachable) as exc:
                log.warning("heartbeat failed", extra={"error": str(exc)})
            self._stop.wait(self.interval_s)

    def start(self) -> "ProviderDaemon":
        """Register now, then heartbeat in a daemon thread."""
        self.register()
        self._thread = threading.Thread(target=self.run, name="provider-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, deregister: bool = False, timeout_s: float = 10.0) -> None:
        """Stop heartbeating (at once, not after the interval); optionally deregister."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if deregister and self.provider_id and self.token:
            self.client.with_credential(self.token).delete(self.provider_id)


# -- a scheduler ----------------------------------------------------------------------------


@dataclass
class Claim:
    """Providers granted together: confirm them when the job starts, release them after."""

    claim_id: str
    expires_at: str
    providers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def provider_ids(self) -> list[str]:
        return [p["id"] for p in self.providers]


class Scheduler:
    """Claim providers, confirm or release the claims, and follow the change feed."""

    def __init__(self, client: RegistryClient, claimant: str = "") -> None:
        self.client = client
        self.claimant = claimant

    def claim(self, count: int = 1, *, claim_ttl_s: int = 60, **filters: Any) -> Claim:
        """Claim `count` idle providers matching `filters` (raises Conflict `no_capacity`)."""
        granted = self.client.claim(count, claim_ttl_s=claim_ttl_s, claimant=self.claimant, **filters)
        return Claim(granted["claim_id"], granted["expires_at"], granted["providers"])

    def confirm(self, claim: Claim) -> list[dict[str, Any]]:
        """Confirm every provider of the claim: the job started."""
        return [self.client.confirm_claim(pid, claim.claim_id) for pid in claim.provider_ids]

    def renew(self, claim: Claim) -> list[dict[str, Any]]:
        """Extend every provider of an unconfirmed claim by its TTL."""
        return [self.client.renew_claim(pid, claim.claim_id) for pid in claim.provider_ids]

    def release(self, claim: Claim) -> None:
        """Release every provider of the claim; one already released or lapsed is skipped."""
        for pid in claim.provider_ids:
            try:
                self.client.release(pid, claim.claim_id)
            except (Conflict, NotFound) as exc:
                log.info("claim already ended", extra={"provider_id": pid, "code": exc.code})

    def follow(
        self, after: str | None = None, *, wait_s: float = 25.0, stop: threading.Event | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield the change feed's events as they come (from now, or after `after`), until `stop`.

        Each long poll waits up to `wait_s`; a poll that finds the feed trimmed past `after`
        yields a `{"type": "truncated"}` marker first, so that a caller can re-read the state.
        """
        if after is None:
            after = self.client.events()["next"]
        while stop is None or not stop.is_set():
            try:
                batch = self.client.events(after, wait_s)
            except RegistryUnreachable as exc:
                log.warning("change feed unreachable; retrying", extra={"error": str(exc)})
                time.sleep(1.0)
                continue
            if batch.get("truncated"):
                yield {"type": "truncated", "after": after}
            yield from batch["events"]
            after = batch["next"]
