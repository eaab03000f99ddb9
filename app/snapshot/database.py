"""PostgreSQL access: connections that fail fast, and the versioned schema migrations."""
from __future__ import annotations

import contextlib
import logging
import re
from importlib import resources
from typing import Iterator

import psycopg

from ..config import mask_url
from .errors import DatabaseUnavailable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")
# Any constant: serialises the migrations of instances that start together.
_MIGRATION_LOCK = 7_305_112_001


def migrations() -> list[tuple[int, str, str]]:
    """Return the (version, name, SQL) of each migration shipped in the package, in order."""
    found = []
    for entry in resources.files(__package__).joinpath("sql").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text()))
    return sorted(found)


@contextlib.contextmanager
def connect(url: str) -> Iterator[psycopg.Connection]:
    """Open a connection with the schema up to date; any PostgreSQL failure raises one error.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached, refused us, or failed a statement.
    """
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, application_name="provider-registry") as conn:
            migrate(conn)
            yield conn
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"PostgreSQL unreachable at {mask_url(url)}: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"PostgreSQL failed: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def migrate(conn: psycopg.Connection) -> list[int]:
    """Apply the migrations not applied yet, in one transaction under a lock; return their versions."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
        for version, name, sql in migrations():
            if version in done:
                continue
            with conn.transaction():
                conn.execute(sql.encode())
                conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, name))
            applied.append(version)
            log.info("database migrated", extra={"version": version, "migration": name})
    return applied
