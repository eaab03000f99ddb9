"""Logging: one JSON object per line, and one access line per request with its request ID."""
from __future__ import annotations

import io
import json
import logging
import re
import sys
from typing import Any, Callable, Iterator

import pytest

from app.jobs.sweeper import Sweeper
from app.logs import configure_logging

from .conftest import new_id, provider_body


@pytest.fixture
def log_lines(monkeypatch) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Configure logging as the service does, into a buffer; return a reader of its lines."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buffer)
    configure_logging("info")

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in buffer.getvalue().splitlines()]

    yield read
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def access_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == "app.access"]


def test_every_log_line_is_json_with_time_level_logger_message(log_lines):
    logging.getLogger("app.example").warning("disk %s", "full", extra={"free_mb": 3})
    [line] = log_lines()
    assert line["level"] == "WARNING"
    assert line["logger"] == "app.example"
    assert line["message"] == "disk full"
    assert line["free_mb"] == 3
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line["time"])


def test_log_level_filters_lines(log_lines):
    logging.getLogger("app.example").debug("not shown at info")
    assert log_lines() == []


def test_each_request_logs_method_path_status_duration_and_a_made_request_id(client, log_lines):
    response = client.post("/providers", json=provider_body())
    [line] = access_lines(log_lines())
    assert line["message"] == "request"
    assert line["level"] == "INFO"
    assert line["method"] == "POST"
    assert line["path"] == "/providers"
    assert line["status"] == 201
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"])
    assert response.headers["X-Request-ID"] == line["request_id"]


def test_request_id_is_taken_from_the_header_and_echoed(client, log_lines):
    response = client.get("/health", headers={"X-Request-ID": "daemon-42.abc:7"})
    assert response.headers["X-Request-ID"] == "daemon-42.abc:7"
    [line] = access_lines(log_lines())
    assert line["request_id"] == "daemon-42.abc:7"
    assert line["path"] == "/health"


@pytest.mark.parametrize("given", ["has spaces", "x" * 129, "quote\"d", ""])
def test_an_unusable_request_id_is_replaced_by_a_made_one(client, log_lines, given):
    response = client.get("/health", headers={"X-Request-ID": given})
    made = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert access_lines(log_lines())[0]["request_id"] == made


def test_made_request_ids_differ_between_requests(client):
    ids = {client.get("/health").headers["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3


def test_errors_are_logged_with_their_status(client, log_lines):
    client.get(f"/providers/{new_id()}")
    client.post("/providers", json={"owner_id": ""})
    client.get("/no/such/route")
    client.delete("/providers")
    statuses = [(line["method"], line["path"], line["status"]) for line in access_lines(log_lines())]
    assert statuses[0][2] == 404 and statuses[0][0] == "GET"
    assert statuses[1:] == [
        ("POST", "/providers", 400), ("GET", "/no/such/route", 404), ("DELETE", "/providers", 405)
    ]


def test_sweeper_transitions_are_json_lines_with_the_provider(providers, registry, redis_db, log_lines):
    body = providers.register(status="busy")
    # Lapse the lease: the deadline lives in the hash and in the leases zset.
    redis_db.hset(f"registry:provider:{body['id']}", "lease_expires_at", 1)
    redis_db.zadd("registry:leases", {body["id"]: 1})
    Sweeper(registry.store, interval_s=1).sweep_once()
    [line] = [line for line in log_lines() if line["logger"] == "app.jobs.sweeper"]
    assert line["message"] == "provider offline: lease lapsed"
    assert line["provider_id"] == body["id"]
    assert line["previous_status"] == "busy"
    assert line["status"] == "offline"
