"""Prometheus metrics: what the registry counts, and `/metrics`, which reads them.

Counters and histograms are updated where things happen, at a cost of a few microseconds and
no Redis call: requests (one `after_request` hook), heartbeats, claims, lease lapses (the
sweeper), store errors, snapshots. Fleet gauges (providers by status and GPU model, outage
grace, the sweeper's lag) are read at scrape time from the store's summary counters: two
round trips per scrape, never a scan.

Under gunicorn every worker writes its samples to files in `PROMETHEUS_MULTIPROC_DIR` (made by
app/multiproc.py in the master), and a scrape, whichever worker answers it, adds them all up.
Without that variable (tests, `flask run`) the default registry of this process is used.
"""
from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from .auth import requires
from .errors import StoreUnavailable
from .multiproc import MULTIPROC_ENV
from .registry import Registry, current_registry

if TYPE_CHECKING:
    from .config import Settings
    from .models import Transition

log = logging.getLogger(__name__)


# Long polls of the change feed last up to 30 s: the last buckets keep them apart.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# prometheus-client picks file-backed values when it is first imported with the variable set:
# decided once, the same way, so that a variable set later cannot hide this process's counts.
MULTIPROCESS = bool(os.environ.get(MULTIPROC_ENV))

REQUESTS = Counter(
    "registry_http_requests", "HTTP requests answered, by route (the URL rule), method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "registry_http_request_duration_seconds",
    "Time from routing to the response (a streamed listing: until its first chunk), by route and method",
    ["route", "method"], buckets=LATENCY_BUCKETS,
)
HEARTBEATS_ACCEPTED = Counter(
    "registry_heartbeats_accepted", "Heartbeats and status changes that renewed a lease"
)
HEARTBEATS_REFUSED = Counter(
    "registry_heartbeats_refused", "Heartbeats and status changes refused, by the error code answered",
    ["reason"],
)
LEASES_LAPSED = Counter(
    "registry_leases_lapsed", "Providers the sweeper turned offline because their lease lapsed"
)
CLAIMS_GRANTED = Counter("registry_claims_granted", "Providers granted by claims")
CLAIMS_EXPIRED = Counter(
    "registry_claims_expired", "Unconfirmed claims that lapsed (the sweeper made the provider idle)"
)
CLAIMS_RELEASED = Counter("registry_claims_released", "Claims released (the provider is idle again)")
STORE_ERRORS = Counter(
    "registry_store_errors",
    "Redis calls that failed: store_unavailable (never sent) or store_timeout (no answer in time)",
    ["code"],
)
SNAPSHOT_DURATION = Histogram(
    "registry_snapshot_duration_seconds", "Time taken by the periodic snapshots into PostgreSQL",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
SNAPSHOT_LAST = Gauge(
    "registry_snapshot_last_success_timestamp_seconds",
    "Unix time of the last periodic snapshot this instance took",
    multiprocess_mode="max",
)

# The label children of each (route, method, status): looked up once, not per request.
_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def install_metrics(app: Flask, settings: "Settings") -> None:
    """Count every request, and serve `/metrics` to the callers `metrics_auth` admits."""
    app.before_request(_start)
    app.after_request(_observe)
    view = scrape
    if settings.metrics_auth == "read":
        view = requires("read", "metrics")(scrape)
    elif settings.metrics_auth == "metrics":
        view = requires("metrics")(scrape)
    bp = Blueprint("metrics", __name__)
    bp.add_url_rule("/metrics", view_func=view, methods=["GET"])
    app.register_blueprint(bp)


def _start() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.get("metrics_started")
    elapsed = time.perf_counter() - started if started is not None else 0.0
    rule = request.url_rule
    status = response.status_code
    if rule is not None:
        route, method = rule.rule, request.method
    else:
        # Unrouted paths and odd methods are the caller's choice: one label each, not one per path.
        route, method = UNMATCHED, request.method if request.method in _METHODS else "OTHER"
    heartbeat = rule is not None and rule.endpoint.endswith(".heartbeat")
    request_done(route, method, status, elapsed, heartbeat, g.get("error_code"))
    return response


def request_done(
    route: str, method: str, status: int, elapsed_s: float, heartbeat: bool, error_code: str | None
) -> None:
    """Count one answered request; Flask's hook and the heartbeat's fast path both call it."""
    children = _CHILDREN.get((route, method, status))
    if children is None:
        children = _CHILDREN[(route, method, status)] = (
            REQUESTS.labels(route, method, str(status)), LATENCY.labels(route, method)
        )
    children[0].inc()
    children[1].observe(elapsed_s)
    if heartbeat:
        if status < 400:
            HEARTBEATS_ACCEPTED.inc()
        else:
            HEARTBEATS_REFUSED.labels(error_code or str(status)).inc()


def swept(transitions: Iterable["Transition"]) -> None:
    """Count the sweeper's transitions: lapsed leases, and lapsed claims."""
    for t in transitions:
        (LEASES_LAPSED if t.status == "offline" else CLAIMS_EXPIRED).inc()


def store_failed(code: str) -> None:
    """Count one Redis failure by its error code."""
    STORE_ERRORS.labels(code).inc()


def snapshot_taken(duration_s: float) -> None:
    """Record a periodic snapshot's duration and time."""
    SNAPSHOT_DURATION.observe(duration_s)
    SNAPSHOT_LAST.set(time.time())


class _Families:
    """A fixed list of metric families, in the shape generate_latest reads."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def scrape() -> Response:
    """Return every metric in Prometheus's text format: counters of every worker, fleet gauges."""
    if MULTIPROCESS:
        source = CollectorRegistry()
        MultiProcessCollector(source)
    else:
        source = REGISTRY
    families = list(source.collect())
    families += fleet_families(current_registry(), families)
    return Response(generate_latest(_Families(families)), mimetype=None, content_type=CONTENT_TYPE_LATEST)


def fleet_families(registry: Registry, counted: list[Metric]) -> Iterator[Metric]:
    """Yield the gauges read at scrape time: from the summary counters, the leases, the clock."""
    up = GaugeMetricFamily("registry_store_up", "1 when this scrape could read Redis, else 0")
    try:
        summary = registry.capacity.summary()
        lag = registry.capacity.sweeper_lag_s()
    except StoreUnavailable:
        up.add_metric([], 0)
        yield up
        return
    up.add_metric([], 1)
    yield up
    by_status = GaugeMetricFamily(
        "registry_providers", "Providers by effective status (lapsed leases count as offline)", labels=["status"]
    )
    for status, count in summary["by_status"].items():
        by_status.add_metric([status], count)
    yield by_status
    grace = GaugeMetricFamily(
        "registry_providers_in_grace", "Providers whose lease runs one more term after a registry outage"
    )
    grace.add_metric([], summary["in_grace"])
    yield grace
    gauges = {
        "providers": ("registry_gpu_model_providers", "Providers with at least one GPU of the model"),
        "gpus": ("registry_gpus", "GPUs by model"),
        "idle_gpus": ("registry_idle_gpus", "GPUs of idle providers, by model"),
        "vram_mb": ("registry_vram_megabytes", "VRAM by GPU model, in MB"),
        "idle_vram_mb": ("registry_idle_vram_megabytes", "VRAM of idle providers by GPU model, in MB"),
    }
    for field, (name, text) in gauges.items():
        family = GaugeMetricFamily(name, text, labels=["gpu_model"])
        for model, counts in summary["by_gpu_model"].items():
            family.add_metric([model], counts[field])
        yield family
    lag_family = GaugeMetricFamily(
        "registry_sweeper_lag_seconds",
        "How long ago the oldest lease not yet swept lapsed (0: none is waiting)",
    )
    lag_family.add_metric([], lag)
    yield lag_family
    last = _value_of(counted, SNAPSHOT_LAST._name)
    if last:
        age = GaugeMetricFamily(
            "registry_snapshot_age_seconds", "Seconds since the last periodic snapshot this instance took"
        )
        age.add_metric([], max(0.0, time.time() - last))
        yield age


def _value_of(families: list[Metric], name: str) -> float | None:
    """Return the largest sample of a gauge family (the most recent, for a timestamp)."""
    values = [s.value for f in families if f.name == name for s in f.samples if s.name == name]
    return max(values) if values else None
