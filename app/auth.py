"""Who is calling and what they may do: service keys with roles, and per-provider tokens.

Two kinds of credential travel as `Authorization: Bearer <secret>`:

- a service key from the configuration (`api_keys`, `api_keys_file`, `REGISTRY_API_KEYS`),
  stored there only as its SHA-256, with roles: `read`, `schedule`, `register`, `admin`;
- a provider token, issued once at registration (256 random bits) and stored only as its
  SHA-256 in the provider's hash. The store compares it inside the same Lua script that does
  the write, so a heartbeat stays one round trip.

Views declare what they need with one decorator line: `@requires("schedule")`,
`@requires("read", provider=True)`, `@requires(provider=True)` (the provider itself or admin).

Authentication comes before parsing: when a view cannot read its request (400, 413, 415) and
the caller is a provider token the store has not checked yet, the token is checked first, so
that a credential matching no key and no token gets 401 whatever the body holds.
"""
from __future__ import annotations

import functools
import json
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from .errors import Forbidden, MalformedJSON, Unauthorized, UnsupportedMediaType, ValidationFailed
from .keyring import ROLES, KeyRing, hash_secret, new_token
from .registry import current_registry
from .store.idempotency import fresh_token
from .store.providers import MUST_BE_NEW, token_mismatch

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)

# Longer than any key we issue; bounds the hashing work a hostile header can ask for.
MAX_CREDENTIAL_CHARS = 512
KEYRING_EXTENSION = "provider_registry_keyring"

F = TypeVar("F", bound=Callable[..., Any])

# What a view raises when it cannot read its request. Their details describe the schema, so an
# unchecked provider token must prove itself before it sees them.
UNREADABLE_REQUEST = (ValidationFailed, MalformedJSON, UnsupportedMediaType, RequestEntityTooLarge)


@dataclass(frozen=True)
class Principal:
    """The caller of the current request.

    kind: `key` (a service key), `provider` (a provider token, checked by the store against
    the provider the request names), or `trusted` (auth disabled: every role).
    """

    kind: str
    name: str
    roles: frozenset[str]
    token_hash: str = ""

    def has(self, role: str) -> bool:
        """Tell whether the caller holds `role`; admin holds them all."""
        return "admin" in self.roles or role in self.roles


TRUSTED = Principal(kind="trusted", name="trusted-network", roles=frozenset(ROLES))


def install_auth(app: Flask, settings: Settings) -> None:
    """Load the app's service keys; warn once when authentication is off."""
    app.extensions[KEYRING_EXTENSION] = KeyRing.from_settings(settings)

    @app.after_request
    def _no_store(response: Response) -> Response:
        # A body that may carry a new token must not be kept by any cache.
        if g.get("token_may_be_issued"):
            response.headers["Cache-Control"] = "no-store"
        return response

    if settings.auth_enabled and not app.extensions[KEYRING_EXTENSION].keys:
        log.warning("no service key is configured (api_keys): only provider tokens can authenticate")
    if not settings.auth_enabled:
        log.warning(
            "authentication is disabled (auth_enabled: false): anyone who reaches this "
            "registry can change or deregister any provider"
        )


def _keyring() -> KeyRing:
    from flask import current_app

    return current_app.extensions[KEYRING_EXTENSION]


def presented_hash() -> str | None:
    """Return the SHA-256 of the request's bearer credential, or None when it sends none.

    Raises:
        Unauthorized: an Authorization header that is not a bearer credential of sane length.
    """
    if "presented_hash" in g:
        return g.presented_hash
    header = request.headers.get("Authorization")
    digest = None
    if header is not None:
        scheme, _, secret = header.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthorized("the Authorization header must be 'Bearer <credential>'", invalid=True)
        if len(secret) > MAX_CREDENTIAL_CHARS:
            raise Unauthorized("the credential is not valid", invalid=True)
        digest = hash_secret(secret)
    g.presented_hash = digest
    return digest


def authenticate(*, provider: bool, roles: tuple[str, ...] = ()) -> Principal:
    """Return the caller; with `provider`, an unknown bearer is taken as a provider token.

    Args:
        roles: the roles the route admits, named in the answer to a credential it refuses.
    Raises:
        Unauthorized: no credential, or one that is neither a service key nor (when
            `provider`) a candidate provider token.
    """
    ring = _keyring()
    if not ring.enabled:
        return TRUSTED
    digest = presented_hash()
    if digest is None:
        raise Unauthorized("this request needs a credential: Authorization: Bearer <key or token>")
    key = ring.match(digest)
    if key is not None:
        return Principal(kind="key", name=key.name, roles=key.roles)
    if provider:
        return Principal(kind="provider", name="", roles=frozenset(), token_hash=digest)
    # A provider token would be known valid only after a lookup by its hash, which no index
    # serves (a token is stored in its provider's hash, found by the ID the request names).
    # So the answer stays 401, but says what the route takes: a provider token here is told it
    # needs a service key, not that it is garbage.
    raise Unauthorized(
        f"the credential is not a service key: this route needs a service key with the "
        f"{role_phrase(roles)}; provider tokens are not accepted here",
        invalid=True,
        details={"required_roles": admitting_roles(roles), "provider_token_accepted": False},
    )


def admitting_roles(roles: tuple[str, ...]) -> list[str]:
    """Return every role that admits a key to a route declared with `roles` (admin always)."""
    return list(dict.fromkeys((*roles, "admin")))


def role_phrase(roles: tuple[str, ...]) -> str:
    """Name the roles a route needs, for an error message: "read or admin role"."""
    return f"{' or '.join(admitting_roles(roles))} role"


def requires(*roles: str, provider: bool = False) -> Callable[[F], F]:
    """Let the view run for admin, for a key holding one of `roles`, or for a provider token.

    Args:
        roles: roles any one of which admits a service key (admin always does).
        provider: also admit a provider token; the store then checks it against the
            provider the request names (`provider_token_hash()`), inside its script.
    """
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = authenticate(provider=provider, roles=roles)
            if principal.kind == "key" and not any(principal.has(r) for r in roles or ("admin",)):
                what = role_phrase(roles)
                if provider:
                    what += " or the provider's own token"
                raise Forbidden(
                    f"the key {principal.name!r} lacks the {what} this route needs; "
                    f"it holds {', '.join(sorted(principal.roles))}",
                    details={
                        "required_roles": admitting_roles(roles),
                        "provider_token_accepted": provider,
                        "key_roles": sorted(principal.roles),
                    },
                )
            g.principal = principal
            try:
                return view(*args, **kwargs)
            except UNREADABLE_REQUEST:
                if principal.kind == "provider":
                    check_provider_token(principal, kwargs.get("provider_id"))
                raise

        # Read by the OpenAPI builder to document each route's security.
        wrapper.required_roles = roles  # type: ignore[attr-defined]
        wrapper.accepts_provider_token = provider  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def check_provider_token(principal: Principal, path_id: uuid.UUID | None) -> None:
    """Check a provider token against the path's provider, else against the body's `id`.

    Only the error path calls this: on success the store checks the token inside its script,
    so a valid request stays one round trip.

    Raises:
        Unauthorized: the token is not the named provider's, or the request names none.
    """
    provider_id = str(path_id) if path_id is not None else _body_provider_id()
    if provider_id is None:
        # Only re-registering a provider by its `id` admits a token; without one, none is valid.
        raise Unauthorized("the credential is not valid", invalid=True)
    if not current_registry().store.token_matches(provider_id, principal.token_hash):
        raise token_mismatch(provider_id)


def _body_provider_id() -> str | None:
    try:
        data = orjson.loads(request.get_data(cache=True))
    except (orjson.JSONDecodeError, RequestEntityTooLarge):
        return None
    given = data.get("id") if isinstance(data, dict) else None
    try:
        return str(uuid.UUID(given)) if isinstance(given, str) else None
    except ValueError:
        return None


def current_principal() -> Principal:
    """Return the caller that `requires` admitted."""
    return g.get("principal", TRUSTED)


def provider_token_hash() -> str:
    """Return the token hash the store must find on the provider, or "" when a role admits."""
    return current_principal().token_hash


@dataclass(frozen=True)
class Registration:
    """The credential side of a registration: the token it may issue, the check the store makes."""

    token: str
    token_hash: str
    expected: str

    def issued(self, created: bool) -> bool:
        """Tell whether the store kept the new token: on creation, or when no token was checked."""
        return created or self.expected == ""


def registration(id_given: bool) -> Registration:
    """Return what a registration stores and checks, from who calls.

    A provider token may only re-register its own provider (and keeps its token); a
    `register` key may only create new providers; admin (or auth off) may also replace one,
    which issues a new token.
    """
    principal = current_principal()
    g.token_may_be_issued = True
    token = fresh_token()  # the same on a retry under the same Idempotency-Key
    if principal.kind == "provider":
        expected = principal.token_hash
    elif principal.has("admin") or not id_given:
        expected = ""
    else:
        expected = MUST_BE_NEW
    return Registration(token=token, token_hash=hash_secret(token), expected=expected)


def client_identity() -> str:
    """Return who to rate-limit: the service key's name, else the client address.

    An unknown bearer does not choose its own bucket, or every guess would get a fresh one.
    """
    try:
        digest = presented_hash()
    except Unauthorized:
        digest = None
    key = _keyring().match(digest) if digest else None
    if key is not None:
        return f"key:{key.name}"
    return f"addr:{request.remote_addr or 'unknown'}"


def service_key_entry(name: str, roles: list[str]) -> tuple[str, dict[str, Any]]:
    """Return a new service key and the `api_keys` entry that admits it."""
    unknown = set(roles) - set(ROLES)
    if not roles or unknown:
        raise ValueError(f"roles must be some of {', '.join(ROLES)}")
    secret = new_token()
    return secret, {"name": name, "sha256": hash_secret(secret), "roles": roles}


def dump_entry(entry: dict[str, Any]) -> str:
    """Return an `api_keys` entry as one line of JSON (also valid YAML)."""
    return json.dumps(entry)
