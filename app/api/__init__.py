"""HTTP blueprints; thin handlers over the store."""
from flask import Flask

from . import claims, contract, events, health, providers, summary, tokens

# Served at the root and again under /api/v1 (the Go daemon posts to /api/v1/...).
_PROVIDER_BLUEPRINTS = (providers.bp, claims.bp, events.bp, summary.bp, tokens.bp)


def register_blueprints(app: Flask) -> None:
    """Serve the routes at the root, and the provider routes again under /api/v1."""
    app.register_blueprint(health.bp)
    app.register_blueprint(contract.bp)
    for bp in _PROVIDER_BLUEPRINTS:
        app.register_blueprint(bp)
        app.register_blueprint(bp, url_prefix="/api/v1", name=f"{bp.name}_v1")
