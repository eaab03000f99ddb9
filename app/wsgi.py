"""The WSGI app as servers load it: `app.wsgi:app` (or the top-level `wsgi:app`).

Loading it starts the background jobs in the serving process (app/jobs/background.py), so that
the sweeper, snapshots and Consul registration run however the service was started.
"""
from .cli import settings_or_exit
from . import create_app
from .jobs.background import install as install_jobs
from .logs import configure_logging

_settings = settings_or_exit()
configure_logging(_settings.log_level)
app = create_app(_settings)
install_jobs(app)
