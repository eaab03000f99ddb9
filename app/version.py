"""The installed package's version, without importing Flask or redis (the gunicorn master reads it)."""
from __future__ import annotations

from importlib import metadata


def package_version() -> str:
    """Return the installed version of the package."""
    try:
        return metadata.version("provider-registry")
    except metadata.PackageNotFoundError:
        return "0+unknown"
