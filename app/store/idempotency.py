"""Idempotency records in Redis, and the attempt that a write request runs under.

A record goes through three states (see idempotency_begin.lua): `pending` (reserved before
the write), `ran` (the write's script ran and its reply was stored in the same script, see
idempotent.lua), `done` (the HTTP answer was stored). An attempt is bound to the request's
context; the store's one script call of that request then runs through `run_script` here.
"""
from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis

from ..errors import IdempotencyInProgress
from ..keyring import new_token
from .keys import Keys
from .scripts import standalone_script, wrap_errors

FENCED = "!fenced"
WRITE_MARKER = "--@write"


@dataclass
class Attempt:
    """One request's use of an Idempotency-Key: who owns the record, and what it replays."""

    store: "IdempotencyStore"
    record_key: str
    owner: str
    # Random values of the write come from here, so that a retry rebuilds the same answer.
    seed: bytes
    # The write's reply, when an earlier attempt ran it and this one only rebuilds the answer.
    replay: Any = None
    used: bool = field(default=False)


_ATTEMPT: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("idempotency_attempt", default=None)


def bind(attempt: Attempt | None) -> contextvars.Token[Attempt | None]:
    """Make `attempt` the current request's; return what `unbind` needs."""
    return _ATTEMPT.set(attempt)


def unbind(token: contextvars.Token[Attempt | None]) -> None:
    """End the current request's attempt."""
    _ATTEMPT.reset(token)


def write_is_fenced() -> bool:
    """Tell whether the request's next store script runs fenced, under an Idempotency-Key."""
    attempt = _ATTEMPT.get()
    return attempt is not None and not attempt.used


def derive_seed(credential: str, salt: str) -> bytes:
    """Return the attempt's seed: only the caller's own credential and the record yield it.

    Redis holds the salt but never the credential (only its SHA-256), so reading Redis does
    not give the tokens an attempt issues.
    """
    return hmac.new(credential.encode(), salt.encode(), hashlib.sha256).digest()


def _derived(seed: bytes, label: str) -> bytes:
    return hmac.new(seed, label.encode(), hashlib.sha256).digest()


def fresh_token() -> str:
    """Return a new 256-bit token; under an Idempotency-Key, the same one on every retry."""
    attempt = _ATTEMPT.get()
    if attempt is None:
        return new_token()
    return base64.urlsafe_b64encode(_derived(attempt.seed, "provider_token")).rstrip(b"=").decode()


def fresh_uuid(label: str) -> str:
    """Return a new random UUID; under an Idempotency-Key, the same one on every retry."""
    attempt = _ATTEMPT.get()
    if attempt is None:
        return str(uuid.uuid4())
    return str(uuid.UUID(bytes=_derived(attempt.seed, label)[:16], version=4))


def _as_redis_reply(value: Any) -> Any:
    # cjson writes an empty Lua table as {} and keeps fractions; Redis would have answered
    # [] and truncated integers. A rebuilt answer must see what the first attempt saw.
    if isinstance(value, dict) and not value:
        return []
    if isinstance(value, list):
        return [_as_redis_reply(item) for item in value]
    if isinstance(value, float):
        return int(value)
    return value


def run_script(
    script: Any, keys: list[str], args: list[Any], client: Any = None, via: Any = None
) -> Any:
    """Run a store script; the first of a request under an Idempotency-Key runs fenced.

    Args:
        client: a pipeline to batch the call in (never fenced).
        via: the client to run on, fenced or not: an acknowledged write pins one connection
            and waits on it for replicas (replication.py).
    Raises:
        IdempotencyInProgress: another attempt took the key over; this write did nothing.
    """
    attempt = _ATTEMPT.get()
    if attempt is None or attempt.used or client is not None:
        return script(keys=keys, args=args, client=client if client is not None else via)
    attempt.used = True
    if attempt.replay is not None:
        if via is not None:
            # The write ran in an earlier attempt. A write on `via` (the record's TTL, renewed)
            # makes the WAIT that follows cover it, since WAIT counts the connection's last write.
            via.pexpire(attempt.record_key, attempt.store.window_ms)
        return _as_redis_reply(attempt.replay)
    wrapped = attempt.store.fenced(script)
    reply = wrapped(keys=[*keys, attempt.record_key], args=[*args, attempt.owner], client=via)
    if reply == [FENCED]:
        raise IdempotencyInProgress("another attempt with this Idempotency-Key took over; retry", 1)
    return reply


@dataclass(frozen=True)
class Begun:
    """What the reservation found: its outcome and the record as stored."""

    outcome: str
    record: dict[str, Any]


class IdempotencyStore:
    """Reserve, settle and replay Idempotency-Key records."""

    def __init__(self, client: redis.Redis, keys: Keys, window_s: float, in_flight_s: float) -> None:
        self.redis = client
        self.keys = keys
        self.window_ms = int(window_s * 1000)
        self.in_flight_ms = int(in_flight_s * 1000)
        self._begin = standalone_script(client, "idempotency_begin")
        self._settle = standalone_script(client, "idempotency_settle")
        lua = resources.files(__package__).joinpath("lua")
        self._wrapper = lua.joinpath("idempotent.lua").read_text()
        # One fenced variant per write script, registered on first use.
        self._fenced: dict[str, Any] = {}

    def fenced(self, script: Any) -> Any:
        """Return the variant of `script` that runs only for the key's owner and records its reply."""
        found = self._fenced.get(script.sha)
        if found is None:
            found = self.redis.register_script(self._wrapper.replace(WRITE_MARKER, script.script))
            self._fenced[script.sha] = found
        return found

    @wrap_errors
    def begin(self, scope_digest: str, fingerprint: str) -> tuple[str, Begun]:
        """Reserve the key for a new owner, or find the earlier attempt's state.

        Returns:
            The new owner, and what was found: `new`, `takeover` (run the write), `ran`
            (rebuild the answer from the stored reply), `done` (replay the answer),
            `busy` (in flight) or `mismatch` (another body).
        """
        owner = secrets.token_hex(16)
        outcome, raw = self._begin(
            keys=[self.keys.idempotency(scope_digest)],
            args=[owner, fingerprint, secrets.token_hex(16), int(time.time() * 1000),
                  self.in_flight_ms, self.window_ms],
        )
        return owner, Begun(outcome, json.loads(raw))

    @wrap_errors
    def record_answer(self, scope_digest: str, owner: str, answer: dict[str, Any]) -> bool:
        """Store the answer of the attempt that owns the key; False when it no longer does."""
        return bool(self._settle(
            keys=[self.keys.idempotency(scope_digest)], args=[owner, "done", json.dumps(answer)]
        ))

    @wrap_errors
    def abandon(self, scope_digest: str, owner: str) -> bool:
        """Drop a reservation whose write certainly never ran, so that a retry runs it."""
        return bool(self._settle(keys=[self.keys.idempotency(scope_digest)], args=[owner, "abandon", ""]))
