"""The GPU provider registry: a Flask service over Redis."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from .config import Settings

MAX_BODY_BYTES = 64 * 1024


def create_app(settings: "Settings | None" = None) -> "Flask":
    """Build the app: settings from the file and environment unless given, then blueprints.

    Imports happen here, not at package import, so that the gunicorn master (which reads
    app.config) imports neither Flask nor redis before gevent workers patch the standard
    library. The app connects to Redis lazily.
    """
    from flask import Flask

    from .api import register_blueprints
    from .auth import install_auth
    from .bounds import install_bounds
    from .config import load_settings
    from .errors import register_error_handlers
    from .fastpath import install_fast_path
    from .jsonprovider import use_orjson
    from .logs import install_request_logging
    from .ratelimit import install_rate_limits
    from .registry import EXTENSION, Registry

    settings = settings or load_settings()
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    use_orjson(app)
    registry = app.extensions[EXTENSION] = Registry.from_settings(settings)
    register_error_handlers(app)
    install_request_logging(app)
    install_bounds(app)
    install_auth(app, settings)
    install_rate_limits(app, settings, registry.store.keys, registry.redis.connection_pool)
    register_blueprints(app)
    install_fast_path(app)
    return app
