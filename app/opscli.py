"""Operator commands over HTTP: `providers list|show|drain|rm`, `summary`, `events --follow`.

They talk to a running registry through the client library (app/client.py), never to Redis,
so they work from any machine that reaches the API. The URL and key come from `--url` and
`--key`, else from `REGISTRY_URL` and `REGISTRY_KEY` (which are not settings: app/config.py
lets them through).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, TextIO

STATUSES = ("idle", "busy", "maintenance", "error", "offline")
SORTS = ("id", "vram", "-vram", "gpus", "-gpus", "last_seen", "-last_seen")


def add_commands(commands: Any) -> None:
    """Add the HTTP commands to the `provider-registry` parser's subcommands."""
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--url", help="the registry's URL (default: $REGISTRY_URL, else http://127.0.0.1:8002)")
    remote.add_argument("--key", help="a service key (default: $REGISTRY_KEY)")
    remote.add_argument("--json", action="store_true", help="print JSON, not a table")

    providers = commands.add_parser("providers", help="list, show, drain or remove providers (over HTTP)")
    verbs = providers.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", parents=[remote], help="providers matching the API's filters")
    listing.add_argument("--gpu-model", help="a substring of a GPU model, any case")
    listing.add_argument("--gpu-model-exact", help="a whole GPU model name")
    listing.add_argument("--min-vram", type=int, help="MB of VRAM per GPU, at least")
    listing.add_argument("--min-gpus", type=int, help="matching GPUs, at least")
    listing.add_argument("--architecture", help="a substring of a GPU architecture")
    listing.add_argument("--location", help="the provider's location")
    listing.add_argument("--status", action="append", choices=STATUSES, help="repeatable")
    listing.add_argument("--healthy-only", action="store_true", help="only providers whose GPUs are all healthy")
    listing.add_argument("--sort", choices=SORTS)
    listing.add_argument("--limit", type=int, help="at most this many (default: all)")
    listing.set_defaults(func=_list)
    show = verbs.add_parser("show", parents=[remote], help="one provider's details")
    show.add_argument("provider_id")
    show.set_defaults(func=_show)
    drain = verbs.add_parser("drain", parents=[remote], help="put a provider in maintenance: no new claims")
    drain.add_argument("provider_id")
    drain.set_defaults(func=_drain)
    remove = verbs.add_parser("rm", parents=[remote], help="deregister a provider")
    remove.add_argument("provider_id")
    remove.set_defaults(func=_remove)

    summary = commands.add_parser("summary", parents=[remote], help="the fleet at a glance (over HTTP)")
    summary.set_defaults(func=_summary)
    events = commands.add_parser("events", parents=[remote], help="the change feed (over HTTP)")
    events.add_argument("--after", help="a feed position (default: the latest events with --follow)")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing events as they come")
    events.set_defaults(func=_events)


def _client(args: argparse.Namespace) -> Any:
    try:
        from .client import RegistryClient
    except ImportError as exc:
        raise SystemExit(f"provider-registry {args.command}: {exc}; install provider-registry[client]") from None
    return RegistryClient(args.url, args.key, retries=2)


def _run(args: argparse.Namespace, action: Callable[[Any], int]) -> int:
    from .client import ApiError, RegistryUnreachable

    client = _client(args)
    try:
        return action(client)
    except ApiError as exc:
        print(f"provider-registry {args.command}: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    except RegistryUnreachable as exc:
        print(f"provider-registry {args.command}: registry unreachable: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


def _print_json(value: Any, out: TextIO = sys.stdout) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False), file=out)


def table(rows: list[list[str]], header: list[str]) -> str:
    """Return rows as a plain text table, columns padded to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _gpus(provider: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for gpu in provider.get("gpus", []):
        counts[gpu["model_name"]] = counts.get(gpu["model_name"], 0) + 1
    return ", ".join(f"{n}x {model}" for model, n in counts.items())


def _list(args: argparse.Namespace) -> int:
    filters = {
        "gpu_model": args.gpu_model, "gpu_model_exact": args.gpu_model_exact, "min_vram": args.min_vram,
        "min_gpus": args.min_gpus, "architecture": args.architecture, "location": args.location,
        "status": args.status, "healthy_only": args.healthy_only or None, "sort": args.sort,
    }

    def action(client: Any) -> int:
        providers = client.list_providers(limit=args.limit, **filters)
        if args.json:
            _print_json(providers)
            return 0
        rows = [[p["id"], p["name"], p["status"], p.get("location") or "", _gpus(p), p.get("last_seen_at") or ""]
                for p in providers]
        print(table(rows, ["ID", "NAME", "STATUS", "LOCATION", "GPUS", "LAST SEEN"]))
        return 0

    return _run(args, action)


def _show(args: argparse.Namespace) -> int:
    def action(client: Any) -> int:
        provider = client.get(args.provider_id)
        if args.json:
            _print_json(provider)
            return 0
        for name in ("id", "name", "status", "owner_id", "hostname", "ip_address", "location",
                     "liveness", "registered_at", "last_seen_at", "lease_expires_at", "version"):
            if provider.get(name) is not None:
                print(f"{name + ':':<18}{provider[name]}")
        for gpu in provider.get("gpus", []):
            print(f"{'gpu:':<18}{gpu['model_name']}, {gpu['vram_mb']} MB"
                  + ("" if gpu.get("is_healthy", True) else " (unhealthy)"))
        return 0

    return _run(args, action)


def _drain(args: argparse.Namespace) -> int:
    def action(client: Any) -> int:
        provider = client.set_status(args.provider_id, "maintenance")
        if args.json:
            _print_json(provider)
        else:
            print(f"{args.provider_id}: {provider['status']}")
        return 0

    return _run(args, action)


def _remove(args: argparse.Namespace) -> int:
    def action(client: Any) -> int:
        client.delete(args.provider_id)
        print(f"{args.provider_id}: deregistered")
        return 0

    return _run(args, action)


def _summary(args: argparse.Namespace) -> int:
    def action(client: Any) -> int:
        summary = client.summary()
        if args.json:
            _print_json(summary)
            return 0
        print(table([[s, str(n)] for s, n in summary["by_status"].items()], ["STATUS", "PROVIDERS"]))
        print(f"in outage grace: {summary['in_grace']}\n")
        rows = [[m, str(c["providers"]), str(c["gpus"]), str(c["idle_gpus"]), str(c["vram_mb"]), str(c["idle_vram_mb"])]
                for m, c in summary["by_gpu_model"].items()]
        print(table(rows, ["GPU MODEL", "PROVIDERS", "GPUS", "IDLE GPUS", "VRAM MB", "IDLE VRAM MB"]))
        print()
        rows = [[loc, str(c["providers"]), str(c["idle_providers"]), str(c["gpus"]), str(c["idle_gpus"])]
                for loc, c in summary["by_location"].items()]
        print(table(rows, ["LOCATION", "PROVIDERS", "IDLE", "GPUS", "IDLE GPUS"]))
        return 0

    return _run(args, action)


def _event_line(event: dict[str, Any]) -> str:
    extra = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("id", "type", "provider_id", "at"))
    return f"{event.get('at', '')}  {event['type']:<16} {event.get('provider_id', '')}  {extra}".rstrip()


def _events(args: argparse.Namespace) -> int:
    def action(client: Any) -> int:
        from .client import Scheduler

        if not args.follow:
            batch = client.events(args.after or "0")
            for event in batch["events"]:
                print(json.dumps(event) if args.json else _event_line(event))
            return 0
        for event in Scheduler(client).follow(args.after):
            print(json.dumps(event) if args.json else _event_line(event), flush=True)
        return 0

    return _run(args, action)
