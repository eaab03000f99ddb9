"""Schemathesis against the live WSGI app: no 5xx, and every answer fits /openapi.json.

Cases are generated from the document itself, valid ones (positive) and ones that break it
(negative), so the run checks the service's robustness and the document's truth together.
Bounded by max_examples per operation and mode to keep the suite fast; each test prints how
many cases it tried (`pytest -s`).
"""
from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import create_app
from app.config import Settings
from app.openapi import build_spec

from .conftest import ADMIN_KEY, READ_KEY

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
ADMIN_EXAMPLES = 15  # per operation and generation mode
WEAK_EXAMPLES = 3


def _operations() -> dict[str, dict]:
    # Built without Redis (nothing connects until a request): the routes alone make the spec.
    offline = create_app(Settings(redis_url="redis://127.0.0.1:1/0", rate_limit_enabled=False))
    spec = build_spec(offline, "0")
    offline.extensions["provider_registry"].close()
    return {
        f"{method.upper()} {path}": operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    }


OPERATIONS = _operations()
LABELS = list(OPERATIONS)
# Negative cases need something to break: a parameter or a body.
WITH_INPUTS = [
    label for label, op in OPERATIONS.items() if op.get("parameters") or op.get("requestBody")
]


def _fuzz(app: Flask, label: str, mode: GenerationMode, headers: dict[str, str], examples: int) -> int:
    """Run generated cases of one operation; return how many ran, and print the tally."""
    operation = schemathesis.openapi.from_wsgi("/openapi.json", app).find_operation_by_label(label)
    assert operation is not None, label
    tried = 0
    statuses: Counter[int] = Counter()

    # A long poll would wait up to 30 s per case for an event that never comes.
    fixed = {"query": {"wait": 0}} if label.endswith("/providers/events") else {}

    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case) -> None:
        nonlocal tried
        tried += 1
        statuses[case.call_and_validate(headers=headers, checks=CHECKS).status_code] += 1

    run()
    who = headers.get("Authorization", "anonymous").removeprefix("Bearer ")[:9]
    print(f"fuzz {label} [{mode.value}, {who}]: {tried} cases, {dict(statuses)}")
    return tried


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.mark.parametrize("label", LABELS)
def test_valid_requests_never_fail_with_5xx_and_conform_to_the_contract(app: Flask, label: str) -> None:
    assert _fuzz(app, label, GenerationMode.POSITIVE, ADMIN, ADMIN_EXAMPLES) > 0


@pytest.mark.parametrize("label", WITH_INPUTS)
def test_invalid_requests_never_fail_with_5xx_and_conform_to_the_contract(app: Flask, label: str) -> None:
    assert _fuzz(app, label, GenerationMode.NEGATIVE, ADMIN, ADMIN_EXAMPLES) > 0


@pytest.mark.parametrize(
    "secret", [None, READ_KEY, "not-a-key"], ids=["anonymous", "read-key", "unknown-key"]
)
@pytest.mark.parametrize("label", LABELS)
def test_refusals_of_weaker_credentials_conform_to_the_contract(app: Flask, label: str, secret) -> None:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    assert _fuzz(app, label, GenerationMode.POSITIVE, headers, WEAK_EXAMPLES) > 0
