"""Many reads in one write, without redis-py's per-command machinery.

A pipeline of a few dozen commands spends more of a worker's time packing each command and
running each reply through its callbacks than Redis spends answering them. The bulk reads
of the store (a page's rows, a snapshot's hashes) are written here as one block of the Redis
protocol on a pooled connection, and their replies read in turn.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import redis


def bulk(part: bytes) -> bytes:
    """Return one argument of a command in the Redis protocol.

    For commands packed from parts that repeat (a page's HMGETs, whose field names are packed
    once); hiredis.pack_command packs a whole command.
    """
    return b"$%d\r\n%s\r\n" % (len(part), part)


def send(conn: Any, packed: bytes, retry: bool = False) -> None:
    """Write `packed` on `conn`.

    `retry`: a pooled connection that died with a restarted Redis is replaced once (nothing
    was read from it yet, and the callers only read: sending again is safe).
    """
    try:
        conn.send_packed_command([packed])
    except redis.ConnectionError:
        if not retry:
            raise
        conn.disconnect()
        conn.send_packed_command([packed])


@contextmanager
def pooled(client: redis.Redis) -> Iterator[Any]:
    """Lend a connection of `client`'s pool; one left with unread replies is closed."""
    pool = client.connection_pool
    conn = pool.get_connection()
    clean = False
    try:
        yield conn
        clean = True
    finally:
        if not clean:
            conn.disconnect()  # its unread replies must not reach the next user
        pool.release(conn)


def replies(client: redis.Redis, packed: bytes, count: int) -> list[Any]:
    """Write `count` commands packed in one block, and return their replies in order."""
    with pooled(client) as conn:
        send(conn, packed, retry=True)
        return [conn.read_response() for _ in range(count)]
