"""HTTP blueprints; thin handlers over the store."""
from flask import Flask

from . import health, providers


def register_blueprints(app: Flask) -> None:
    """Serve the routes at the root, and the provider routes again under /api/v1."""
    app.register_blueprint(health.bp)
    app.register_blueprint(providers.bp)
    app.register_blueprint(providers.bp, url_prefix="/api/v1", name="providers_v1")
