"""The live dashboard at /dashboard: one HTML page, a stylesheet and a script, no build step.

The page is public (it holds no data); its script asks the API for everything with the key the
operator enters once, kept in the browser's sessionStorage (gone with the tab).
"""
from __future__ import annotations

from importlib import resources

from flask import Blueprint, Flask, Response, render_template

bp = Blueprint("dashboard", __name__, template_folder="templates")
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
# Only this origin's own files: a script injected through provider data would not run.
_CSP = "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def install_dashboard(app: Flask) -> None:
    """Serve the dashboard's page and assets."""
    app.register_blueprint(bp)


@bp.get("/dashboard")
def page() -> Response:
    """Return the dashboard page."""
    response = Response(render_template("dashboard.html"), mimetype="text/html")
    response.headers["Content-Security-Policy"] = _CSP
    return response


@bp.get("/dashboard/dashboard.js")
def script() -> Response:
    """Return the dashboard's script."""
    return _asset("dashboard.js")


@bp.get("/dashboard/dashboard.css")
def stylesheet() -> Response:
    """Return the dashboard's stylesheet."""
    return _asset("dashboard.css")


def _asset(name: str) -> Response:
    text = resources.files(__package__).joinpath("static", name).read_text()
    response = Response(text, mimetype=ASSETS[name])
    response.headers["Cache-Control"] = "no-cache"
    return response
