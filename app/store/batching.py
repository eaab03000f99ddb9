"""Commands that a gevent worker's greenlets send at the same moment, written to Redis together.

A gevent worker serves many requests at once, and each heartbeat is one FCALL. Sent one by
one, every FCALL costs the worker a write, a read and two switches through the hub, and costs
Redis a read and a write of its own. The batcher gathers the commands that greenlets issue
until its flusher greenlet runs (spawned by the first of them, it runs once the greenlets
ready at that moment have had their turn), writes them in one go on one connection, and reads
their replies in order: redis-py's pipelining, across requests, as ioredis's auto-pipelining
does. Each command is still a command of its own (atomic alone, with its own reply or error
reply), so nothing about its outcome changes. Measured with 32 greenlets sending heartbeats:
half the client CPU and two thirds of Redis's CPU per heartbeat.

Under threads (gthread, sync) commands go one by one: see FunctionLibrary.
"""
from __future__ import annotations

from typing import Any, Callable

import gevent
import redis
from gevent.event import AsyncResult

Batch = list[tuple[tuple[Any, ...], AsyncResult]]


def _copy(exc: BaseException) -> BaseException:
    """Return an exception of the same kind and message, one for each waiting greenlet."""
    try:
        return type(exc)(*exc.args)
    except Exception:
        return exc


class CommandBatcher:
    """Send commands greenlets issue close together as one write; hand each its reply."""

    def __init__(self, checkout: Callable[[], Any], checkin: Callable[[Any], None]) -> None:
        self._checkout, self._checkin = checkout, checkin
        self._pending: Batch = []
        self._scheduled = False

    def run(self, command: tuple[Any, ...]) -> Any:
        """Send `command` with the others of its batch; return its reply or raise its error."""
        waiter = AsyncResult()
        self._pending.append((command, waiter))
        if not self._scheduled:
            self._scheduled = True
            gevent.spawn(self._flush)
        return waiter.get()

    def _flush(self) -> None:
        batch, self._pending, self._scheduled = self._pending, [], False
        try:
            self._send(batch)
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it
            for _, waiter in batch:
                if not waiter.ready():
                    waiter.set_exception(_copy(exc))
            if not isinstance(exc, Exception):
                raise

    def _send(self, batch: Batch) -> None:
        conn = self._checkout()
        try:
            done = self._exchange(conn, batch)
            if done < len(batch):
                # A connection that died (a restarted Redis): once more, at once, as the
                # registry's client does; a second failure is the callers' to hear.
                conn.disconnect()
                rest = batch[done:]
                self._exchange(conn, rest, retry=False)
        except BaseException:
            conn.disconnect()  # a timeout may leave replies in flight
            raise
        finally:
            self._checkin(conn)

    @staticmethod
    def _exchange(conn: Any, batch: Batch, retry: bool = True) -> int:
        """Write the batch and read its replies; return how many were answered.

        A connection error returns early when `retry` (the rest may be sent again), else it
        is raised; error replies go to their own command's waiter.
        """
        done = 0
        try:
            conn.connect()  # see FunctionLibrary: a Sentinel connection must connect itself
            conn.send_packed_command(conn.pack_commands([command for command, _ in batch]))
            for _, waiter in batch:
                try:
                    reply = conn.read_response()
                except redis.ResponseError as exc:
                    waiter.set_exception(exc)
                else:
                    waiter.set(reply)
                done += 1
        except redis.ConnectionError:
            if not retry:
                raise
        return done
