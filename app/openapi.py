"""The API contract: an OpenAPI 3 document built from the app's routes and marshmallow schemas.

Each view is described once, in OPERATIONS, by the schemas it loads and answers with; paths,
path parameters, methods and security come from the routes themselves (and from the
`@requires` decorator), so the document cannot list a route that does not exist.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema
from werkzeug.routing import Rule

from .keyring import ROLES
from .schemas import (
    ClaimIdSchema,
    ClaimSchema,
    EventsQuerySchema,
    HeartbeatSchema,
    ListQuerySchema,
    ProviderDetailsSchema,
    RegisterSchema,
)
from .schemas.responses import (
    ClaimGrantSchema,
    ErrorSchema,
    EventsSchema,
    SummarySchema,
    HealthSchema,
    LeaseSchema,
    ProviderSchema,
    RegisteredSchema,
    TokenSchema,
)

OPENAPI_VERSION = "3.0.3"
SPEC_EXTENSION = "provider_registry_openapi"
_METHODS_SKIPPED = {"HEAD", "OPTIONS"}
_PARAM = re.compile(r"<(?:([a-zA-Z_]+)(?:\([^)]*\))?:)?([a-zA-Z_][a-zA-Z0-9_]*)>")
_CONVERTERS = {
    "uuid": {"type": "string", "format": "uuid"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "default": {"type": "string"},
    "string": {"type": "string"},
    "path": {"type": "string"},
}

ERROR_TEXT = {
    400: "Invalid request: malformed JSON, a field that fails validation, or bad query parameters",
    401: "No credential, or one that is not valid for this request",
    403: "The credential lacks the role, or may not touch this provider",
    404: "No such provider",
    409: "Conflict: no_capacity (too few free providers match), claim_mismatch, or idempotency_in_progress",
    412: "If-Match names a version the provider no longer has (version_mismatch)",
    413: "The body is larger than 64 KiB",
    415: "The body is not application/json",
    422: "The Idempotency-Key was first used with another body (idempotency_key_reused)",
    429: "Rate limit reached; retry after Retry-After seconds",
    503: (
        "store_unavailable: Redis could not be reached, nothing was applied; store_timeout: it did "
        "not answer, a write may have been applied (retry with the same Idempotency-Key)"
    ),
}
_HEADER_TEXT = {
    "Retry-After": ("integer", "seconds to wait before retrying"),
    "WWW-Authenticate": ("string", "how to authenticate: Bearer"),
    "Location": ("string", "the provider's URL"),
    "X-Total-Count": ("integer", "how many providers match, over all pages"),
    "Link": ("string", 'the next page: <url>; rel="next"'),
    "Cache-Control": ("string", "no-store: the body holds a secret"),
    "ETag": ("string", "the provider's version, for If-Match"),
}
_ERROR_HEADERS = {401: ["WWW-Authenticate"], 412: ["ETag"], 429: ["Retry-After"], 503: ["Retry-After"]}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "1 to 255 printable ASCII characters; a retry with the same key and body returns the first answer",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'Only change the provider if its version is one of these ("<version>" tags, or *)',
    "schema": {"type": "string"},
}


@dataclass(frozen=True)
class Response:
    """One documented answer: its description, JSON schema (or none), and headers."""

    description: str
    schema: Any = None
    headers: tuple[str, ...] = ()
    media_type: str = "application/json"


@dataclass(frozen=True)
class Operation:
    """What a view takes and answers, beyond what its route says."""

    responses: dict[int, Response]
    tag: str = "providers"
    body: type[Schema] | None = None
    body_required: bool = True
    query: type[Schema] | None = None
    uses_store: bool = True
    rate_limited: bool = True
    errors: tuple[int, ...] = field(default=())
    if_match: bool = False


OPERATIONS: dict[str, Operation] = {
    "app.api.providers.register_provider": Operation(
        body=RegisterSchema,
        responses={
            201: Response("Registered; the body carries the provider_token, once", RegisteredSchema,
                          ("Location", "ETag", "Cache-Control")),
            200: Response("Re-registered in place (same id)", RegisteredSchema,
                          ("Location", "ETag", "Cache-Control")),
        },
    ),
    "app.api.providers.heartbeat": Operation(
        body=HeartbeatSchema,
        body_required=False,
        responses={200: Response("Lease renewed", LeaseSchema, ("ETag",))},
        errors=(404, 412),
        if_match=True,
    ),
    "app.api.providers.update_provider": Operation(
        body=ProviderDetailsSchema,
        responses={200: Response("Details replaced", ProviderSchema, ("ETag",))},
        errors=(404, 412),
        if_match=True,
    ),
    "app.api.providers.get_provider": Operation(
        responses={200: Response("The provider", ProviderSchema, ("ETag",))}, errors=(404,)
    ),
    "app.api.providers.delete_provider": Operation(
        responses={204: Response("Deregistered", media_type="")}, errors=(404, 412), if_match=True
    ),
    "app.api.claims.claim": Operation(
        tag="scheduling",
        body=ClaimSchema,
        responses={200: Response("Claimed, all or nothing", ClaimGrantSchema)},
        errors=(409,),
    ),
    "app.api.claims.renew": Operation(
        tag="scheduling",
        body=ClaimIdSchema,
        responses={200: Response("Claim extended by its TTL", ProviderSchema, ("ETag",))},
        errors=(404, 409),
    ),
    "app.api.claims.confirm": Operation(
        tag="scheduling",
        body=ClaimIdSchema,
        responses={200: Response("Claim confirmed: the job started", ProviderSchema, ("ETag",))},
        errors=(404, 409),
    ),
    "app.api.claims.release": Operation(
        tag="scheduling",
        body=ClaimIdSchema,
        responses={200: Response("Claim ended; the provider is idle", ProviderSchema, ("ETag",))},
        errors=(404, 409),
    ),
    "app.api.events.events": Operation(
        tag="scheduling",
        query=EventsQuerySchema,
        responses={200: Response("Events after `after` (long poll up to `wait` s)", EventsSchema)},
    ),
    "app.api.summary.summary": Operation(
        tag="scheduling",
        responses={200: Response("Capacity by status, GPU model and location", SummarySchema)},
    ),
    "app.api.providers.list_providers": Operation(
        query=ListQuerySchema,
        responses={
            200: Response(
                "One page of matching providers, in ID order",
                {"type": "array", "items": ProviderSchema},
                ("X-Total-Count", "Link"),
            )
        },
    ),
    "app.api.tokens.rotate_token": Operation(
        responses={200: Response("The new token, once; the old one no longer works", TokenSchema,
                                 ("Cache-Control",))},
        errors=(404,),
    ),
    "app.api.health.health": Operation(
        tag="operations",
        uses_store=False,
        rate_limited=False,
        responses={
            200: Response("The instance can serve", HealthSchema),
            503: Response("Redis does not answer", HealthSchema, ("Retry-After",)),
        },
    ),
    "app.api.contract.openapi": Operation(
        tag="contract",
        uses_store=False,
        rate_limited=False,
        responses={200: Response("This document", {"type": "object"})},
    ),
    "app.metrics.scrape": Operation(
        tag="operations",
        responses={200: Response("Prometheus metrics, text format 0.0.4 (docs/METRICS.md)",
                                 {"type": "string"}, media_type="text/plain")},
    ),
    "app.dashboard.page": Operation(
        tag="operations",
        uses_store=False,
        rate_limited=False,
        responses={200: Response("The live dashboard page (docs/DASHBOARD.md)", {"type": "string"}, media_type="text/html")},
    ),
    "app.dashboard.script": Operation(
        tag="operations",
        uses_store=False,
        rate_limited=False,
        responses={200: Response("The dashboard's script", {"type": "string"}, media_type="text/javascript")},
    ),
    "app.dashboard.stylesheet": Operation(
        tag="operations",
        uses_store=False,
        rate_limited=False,
        responses={200: Response("The dashboard's stylesheet", {"type": "string"}, media_type="text/css")},
    ),
    "app.api.contract.docs": Operation(
        tag="contract",
        uses_store=False,
        rate_limited=False,
        responses={200: Response("This document as a page", {"type": "string"}, media_type="text/html")},
    ),
}


def view_key(view: Callable[..., Any]) -> str:
    """Return the key of a view in OPERATIONS: its module and name."""
    return f"{view.__module__}.{view.__name__}"


def openapi_path(rule: Rule) -> tuple[str, list[dict[str, Any]]]:
    """Return the OpenAPI path of a Flask rule and its path parameters."""
    parameters = []
    for converter, name in _PARAM.findall(rule.rule):
        parameters.append({
            "name": name,
            "in": "path",
            "required": True,
            "schema": dict(_CONVERTERS.get(converter or "default", {"type": "string"})),
        })
    return _PARAM.sub(lambda m: "{" + m.group(2) + "}", rule.rule), parameters


def _schema_name(schema: Any) -> str:
    cls = schema if isinstance(schema, type) else type(schema)
    name = cls.__name__.removesuffix("Schema")
    if not isinstance(schema, type) and schema.partial:
        name += "Partial"
    return name


def _response(status: int, response: Response) -> dict[str, Any]:
    out: dict[str, Any] = {"description": response.description}
    if response.media_type and response.schema is not None:
        out["content"] = {response.media_type: {"schema": response.schema}}
    if response.headers:
        out["headers"] = {
            name: {"description": _HEADER_TEXT[name][1], "schema": {"type": _HEADER_TEXT[name][0]}}
            for name in response.headers
        }
    return out


def _error(status: int) -> dict[str, Any]:
    return _response(status, Response(ERROR_TEXT[status], ErrorSchema, tuple(_ERROR_HEADERS.get(status, ()))))


def _security(view: Callable[..., Any]) -> tuple[list[dict[str, list[str]]], str] | None:
    roles = getattr(view, "required_roles", None)
    if roles is None:
        return None
    who = [f"a service key with the `{role}` role" for role in roles] + ["an `admin` key"]
    if getattr(view, "accepts_provider_token", False):
        who.append("the provider's own token")
    return [{"bearer": []}], "Allowed: " + ", ".join(who) + "."


def _operation(rule: Rule, method: str, view: Callable[..., Any], params: list[dict[str, Any]]) -> dict[str, Any]:
    op = OPERATIONS.get(view_key(view)) or Operation(responses={200: Response("Success")})
    doc = (view.__doc__ or "").strip().splitlines()
    out: dict[str, Any] = {
        "operationId": f"{rule.endpoint}.{method.lower()}",
        "summary": doc[0] if doc else rule.endpoint,
        "tags": [op.tag],
        "parameters": list(params),
    }
    if op.query is not None:
        out["parameters"].append({"in": "query", "schema": op.query})
    if op.if_match:
        out["parameters"].append(dict(_IF_MATCH))
    responses = {str(status): _response(status, r) for status, r in op.responses.items()}
    errors = {400, *op.errors}
    if getattr(view, "accepts_idempotency_key", False):
        out["parameters"].append(dict(_IDEMPOTENCY_KEY))
        errors |= {409, 422}
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": op.body}},
        }
        errors |= {413, 415}
    security = _security(view)
    if security is not None:
        out["security"], out["description"] = security
        errors |= {401, 403}
    else:
        out["security"] = []
    if op.rate_limited:
        errors.add(429)
    if op.uses_store:
        errors.add(503)
    for status in sorted(errors):
        responses.setdefault(str(status), _error(status))
    out["responses"] = responses
    return out


def build_spec(app: Flask, version: str) -> dict[str, Any]:
    """Return the OpenAPI document of every route of `app`."""
    spec = APISpec(
        title="GPU provider registry",
        version=version,
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin(schema_name_resolver=_schema_name)],
        info={
            "description": (
                "Registration, heartbeat leases and scheduling queries of GPU providers. "
                "Every error is a JSON object with `error` (a message) and `code`. "
                f"Roles of service keys: {', '.join(ROLES)}."
            )
        },
    )
    spec.components.security_scheme(
        "bearer",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "A service key (api_keys) or a provider token from registration.",
        },
    )
    spec.components.schema("Error", schema=ErrorSchema)
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        path, params = openapi_path(rule)
        operations = {
            method.lower(): _operation(rule, method, view, params)
            for method in sorted((rule.methods or set()) - _METHODS_SKIPPED)
        }
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def spec_of(app: Flask, version: str) -> dict[str, Any]:
    """Return the app's document, built once (the routes do not change after start-up)."""
    if SPEC_EXTENSION not in app.extensions:
        app.extensions[SPEC_EXTENSION] = build_spec(app, version)
    return app.extensions[SPEC_EXTENSION]
