"""Slow-body clients, run as their own process: `python -m tests.slow_clients <port> <path> ...`.

Each connection sends a request's headers, then its body one byte a second, and reconnects when
answered; a JSON summary goes to stdout. A process of its own, so that thousands of sockets do
not compete for the GIL with the client whose latency a test measures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any

BODY_BYTES = 64


def raise_open_files_limit(needed: int) -> None:
    """Raise the soft limit of open files towards the hard limit, for `needed` sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class Tally:
    def __init__(self) -> None:
        self.open = 0
        self.peak_open = 0
        self.answers: list[dict[str, Any]] = []
        self.errors: dict[str, int] = {}

    def error(self, exc: BaseException) -> None:
        self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1


async def one_connection(port: int, path: str, stop_at: float, tally: Tally, reconnect: bool) -> None:
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\n"
        f"Content-Length: {BODY_BYTES}\r\n\r\n"
    ).encode()
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            tally.error(exc)
            await asyncio.sleep(0.5)
            continue
        tally.open += 1
        tally.peak_open = max(tally.peak_open, tally.open)
        try:
            writer.write(head)
            started = time.monotonic()
            answer = b""
            while time.monotonic() < stop_at + 30:
                try:
                    writer.write(b" ")
                except OSError:
                    pass
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), timeout=1.0)
                except asyncio.TimeoutError:
                    continue
                if not chunk:
                    break
                answer += chunk
                if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                    break
            elapsed = time.monotonic() - started
            status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
            head_text, _, body = answer.partition(b"\r\n\r\n")
            tally.answers.append({
                "status": status,
                "elapsed_s": round(elapsed, 3),
                "json": b"content-type: application/json" in head_text.lower(),
                "body": body.decode("utf-8", "replace")[:200],
            })
        except OSError as exc:
            tally.error(exc)
        finally:
            tally.open -= 1
            writer.close()
        if not reconnect:
            return


async def main(port: int, path: str, connections: int, ramp_s: float, duration_s: float, reconnect: bool) -> Tally:
    tally = Tally()
    stop_at = time.monotonic() + duration_s
    tasks = []
    for i in range(connections):
        tasks.append(asyncio.create_task(one_connection(port, path, stop_at, tally, reconnect)))
        await asyncio.sleep(ramp_s / connections)
    await asyncio.gather(*tasks)
    return tally


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("path")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--ramp-s", type=float, default=2.0)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--once", action="store_true", help="do not reconnect once answered")
    args = parser.parse_args()
    raise_open_files_limit(args.connections + 100)
    result = asyncio.run(
        main(args.port, args.path, args.connections, args.ramp_s, args.duration_s, not args.once)
    )
    json.dump(
        {"peak_open": result.peak_open, "answers": result.answers, "errors": result.errors}, sys.stdout
    )
