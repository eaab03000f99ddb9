"""Background jobs: one process per instance, started by the gunicorn master (see runner)."""
