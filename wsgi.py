"""WSGI entry point for `gunicorn wsgi:app`; the package's own is `app.wsgi:app`."""
from app.wsgi import app

__all__ = ["app"]
