"""The `provider-registry` command: serve, background jobs, and operator tasks."""
from __future__ import annotations

import argparse
import atexit
import sys
from pathlib import Path

from .config import ConfigError, Settings, load_settings
from .opscli import add_commands as add_http_commands


def settings_or_exit() -> Settings:
    """Load the settings, or print one line and exit with status 2."""
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"provider-registry: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args: argparse.Namespace) -> int:
    from gunicorn.app.wsgiapp import run

    from .logs import configure_logging

    settings = settings_or_exit()
    configure_logging(settings.log_level)
    if args.first_run_key:
        from .firstrun import ensure_first_run_key

        ensure_first_run_key(settings)
    # A local redis-server stands in for one server only, never for Sentinel or a Cluster.
    if args.local_redis and not (settings.redis_sentinels or settings.redis_cluster_nodes):
        # Only here: importing redis (and so ssl) in the master makes gevent workers warn that
        # they patch ssl too late.
        from .local_redis import ensure_redis

        process = ensure_redis(settings.redis_url, Path("var/redis"))
        if process is not None:
            atexit.register(process.terminate)
    sys.argv = ["gunicorn", "--config", "python:app.gunicorn_conf", "app.wsgi:app"]
    run()
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from .jobs.runner import JobRunner
    from .logs import configure_logging

    settings = settings_or_exit()
    configure_logging(settings.log_level)
    JobRunner(
        settings, parent_pid=args.parent_pid, bound_port=args.port, left_consul_fd=args.left_consul_fd
    ).run()
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    from .jobs.consul import local_health_url, probe_health

    settings = settings_or_exit()
    healthy, note = probe_health(local_health_url(settings, settings.port), args.timeout)
    print(note)
    return 0 if healthy else 1


def _new_key(args: argparse.Namespace) -> int:
    from .auth import dump_entry, service_key_entry

    try:
        secret, entry = service_key_entry(args.name, args.roles.split(","))
    except ValueError as exc:
        print(f"provider-registry: {exc}", file=sys.stderr)
        return 2
    # The secret goes to the holder, the entry to api_keys; the registry never sees the secret.
    print(f"key:   {secret}")
    print(f"entry: {dump_entry(entry)}")
    return 0


def _fail(command: str, message: str, status: int = 1) -> int:
    print(f"provider-registry {command}: {message}", file=sys.stderr)
    return status


def _snapshot_command(args: argparse.Namespace) -> int:
    """Run `snapshot` or `restore` once: a summary line, or one line saying why not."""
    from .config import mask_url
    from .errors import StoreUnavailable
    from .logs import configure_logging
    from .registry import Registry

    settings = settings_or_exit()
    configure_logging(settings.log_level)
    if not settings.database_url:
        return _fail(args.command, "database_url is not set (REGISTRY_DATABASE_URL)", 2)
    try:
        from . import snapshot
        from .snapshot.progress import Progress
    except ImportError as exc:
        return _fail(args.command, f"{exc}; install provider-registry[snapshot]", 2)

    registry = Registry.from_settings(settings)
    try:
        if args.command == "snapshot":
            result = snapshot.take_snapshot(
                registry.store, settings.database_url, force=args.force,
                retention_days=settings.snapshot_retention_days, progress=Progress.for_terminal,
            )
        else:
            result = snapshot.restore(
                registry.store, settings.database_url, force=args.force, dry_run=args.dry_run,
                progress=Progress.for_terminal,
            )
    except snapshot.SnapshotError as exc:
        return _fail(args.command, str(exc))
    except StoreUnavailable as exc:
        return _fail(args.command, f"Redis unavailable at {mask_url(settings.redis_url)}: {exc.message}")
    finally:
        registry.close()
    assert result is not None  # only a periodic snapshot skips
    print(result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="provider-registry",
        description="GPU provider registry. Configuration: configs/config.yaml "
        "(or $REGISTRY_CONFIG) and REGISTRY_<KEY> variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the API under gunicorn")
    serve.add_argument(
        "--local-redis",
        action="store_true",
        help="start a local redis-server when none answers at redis_url",
    )
    serve.add_argument(
        "--first-run-key",
        action="store_true",
        help="when no service key is configured, make an admin key once (var/keys.yaml); what `make run` does",
    )
    serve.set_defaults(func=_serve)
    jobs = commands.add_parser(
        "jobs", help="keep the instance registered in Consul (the gunicorn master starts this)"
    )
    jobs.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    jobs.add_argument("--port", type=int, help="the port gunicorn bound (default: the setting)")
    jobs.add_argument(
        "--left-consul-fd", type=int, help="file descriptor to write one byte to once out of Consul"
    )
    jobs.set_defaults(func=_jobs)
    healthcheck = commands.add_parser(
        "healthcheck", help="exit 0 when this host's registry answers /health with 200 (container HEALTHCHECK)"
    )
    healthcheck.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    healthcheck.set_defaults(func=_healthcheck)
    new_key = commands.add_parser(
        "new-key", help="make a service key: print it once, with its api_keys entry (a SHA-256)"
    )
    new_key.add_argument("name", help="who holds the key, e.g. scheduler-eu")
    new_key.add_argument("--roles", required=True, help="comma-separated: read,schedule,register,admin")
    new_key.set_defaults(func=_new_key)
    snap = commands.add_parser("snapshot", help="snapshot the registry into PostgreSQL now")
    snap.add_argument(
        "--force",
        action="store_true",
        help="snapshot even though Redis lost the data set the snapshot holds (overwrites it)",
    )
    snap.set_defaults(func=_snapshot_command)
    rest = commands.add_parser("restore", help="load the latest snapshot into Redis")
    rest.add_argument("--force", action="store_true", help="replace every provider Redis holds")
    rest.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    rest.set_defaults(func=_snapshot_command)
    add_http_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
