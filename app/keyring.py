"""Service keys: parsed from the configuration, matched in constant time.

Kept free of Flask and Redis imports: the gunicorn master validates the configuration with
it before any worker (and gevent's patching) exists.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import yaml

if TYPE_CHECKING:
    from .config import Settings

# `metrics` reads /metrics and nothing else (see the metrics_auth setting).
ROLES = ("read", "schedule", "register", "admin", "metrics")
TOKEN_BYTES = 32  # 256 bits


def new_token() -> str:
    """Return a fresh random secret of 256 bits, URL-safe."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_secret(secret: str) -> str:
    """Return the SHA-256 of a secret as lowercase hex: the only form the registry keeps."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ServiceKey:
    """A configured service key: its name, the SHA-256 of the secret, its roles."""

    name: str
    sha256: str
    roles: frozenset[str]


def _config_error(message: str) -> Exception:
    from .config import ConfigError  # config imports this module lazily; keep it one-way

    return ConfigError(message)


def parse_service_keys(entries: Iterable[Any], source: str) -> list[ServiceKey]:
    """Validate `api_keys` entries into service keys.

    Raises:
        ConfigError: an entry without a name, a SHA-256 that is not 64 hex digits, or an
            unknown or missing role.
    """
    keys = []
    for i, entry in enumerate(entries):
        where = f"api_keys[{i}] (from {source})"
        if not isinstance(entry, dict) or set(entry) - {"name", "sha256", "roles"}:
            raise _config_error(f"{where} must be a mapping of name, sha256 and roles")
        name, digest, roles = entry.get("name"), entry.get("sha256"), entry.get("roles")
        if not isinstance(name, str) or not name.strip():
            raise _config_error(f"{where} needs a non-empty name")
        if (
            not isinstance(digest, str)
            or len(digest) != 64
            or any(c not in string.hexdigits for c in digest)
        ):
            raise _config_error(f"{where} ({name}): sha256 must be 64 hex digits")
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not roles or not set(roles) <= set(ROLES):
            raise _config_error(f"{where} ({name}): roles must be a non-empty list of {', '.join(ROLES)}")
        keys.append(ServiceKey(name=name, sha256=digest.lower(), roles=frozenset(roles)))
    return keys


def load_service_keys(settings: Settings) -> list[ServiceKey]:
    """Return the service keys of `api_keys` and of `api_keys_file`.

    The file holds either a list of keys or a mapping with an `api_keys` list, as YAML or JSON.

    Raises:
        ConfigError: an unreadable file, a bad entry, or two keys with one name or one secret.
    """
    keys = parse_service_keys(settings.api_keys, "api_keys")
    if settings.api_keys_file:
        path = Path(settings.api_keys_file)
        try:
            loaded = yaml.safe_load(path.read_text()) or []
        except OSError as exc:
            raise _config_error(f"cannot read api_keys_file {path}: {exc.strerror}") from None
        except yaml.YAMLError:
            raise _config_error(f"api_keys_file {path} is not valid YAML or JSON") from None
        if isinstance(loaded, dict):
            loaded = loaded.get("api_keys", [])
        if not isinstance(loaded, list):
            raise _config_error(f"api_keys_file {path} must hold a list of keys")
        keys += parse_service_keys(loaded, str(path))
    names = [key.name for key in keys]
    digests = [key.sha256 for key in keys]
    if len(set(names)) != len(names):
        raise _config_error("two service keys share one name")
    if len(set(digests)) != len(digests):
        raise _config_error("two service keys share one secret")
    return keys


class KeyRing:
    """The service keys of one app, matched in constant time."""

    def __init__(self, keys: list[ServiceKey], enabled: bool = True) -> None:
        self.keys = keys
        self.enabled = enabled

    @classmethod
    def from_settings(cls, settings: Settings) -> "KeyRing":
        """Load the keys the settings name."""
        return cls(load_service_keys(settings), enabled=settings.auth_enabled)

    def match(self, secret_hash: str) -> ServiceKey | None:
        """Return the key whose hash equals `secret_hash`, comparing with every key."""
        found = None
        for key in self.keys:
            # No early exit: the time taken does not say which key, if any, matched.
            if hmac.compare_digest(key.sha256, secret_hash):
                found = key
        return found
