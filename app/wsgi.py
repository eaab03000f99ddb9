"""The WSGI app as gunicorn loads it: `app.wsgi:app`."""
from .cli import settings_or_exit
from . import create_app
from .logs import configure_logging

_settings = settings_or_exit()
configure_logging(_settings.log_level)
app = create_app(_settings)
