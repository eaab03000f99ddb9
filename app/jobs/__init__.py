"""Background jobs, run by the serving processes: elected ones (sweeper, snapshots, data watch)
and one Consul registration per instance (see background.py)."""
