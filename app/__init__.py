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
    from .api import register_blueprints
    from .auth import install_auth
    from .body import BodyDeadline
    from .bounds import install_bounds
    from .config import load_settings
    from .dashboard import install_dashboard
    from .errors import register_error_handlers
    from .fastpath import install_fast_path
    from .jsonprovider import use_orjson
    from .logs import install_request_logging
    from .metrics import install_metrics
    from .options import RegistryFlask
    from .ratelimit import install_rate_limits
    from .registry import EXTENSION, Registry

    settings = settings or load_settings()
    app = RegistryFlask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    use_orjson(app)
    registry = app.extensions[EXTENSION] = Registry.from_settings(settings)
    register_error_handlers(app)
    install_request_logging(app)
    install_bounds(app)
    install_auth(app, settings)
    install_rate_limits(app, settings, registry.store.keys, *registry.topology.rate_limit_storage(registry.redis))
    register_blueprints(app)
    install_metrics(app, settings)
    install_dashboard(app)
    install_fast_path(app)
    # Outermost, so that every read of the body, whoever makes it, keeps to the deadline.
    app.wsgi_app = BodyDeadline(app.wsgi_app, settings.body_timeout_s)  # type: ignore[method-assign]
    return app
