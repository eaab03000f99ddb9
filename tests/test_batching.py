"""Under gevent, heartbeats sent at the same moment share one write to Redis (batching.py).

Each command keeps its own reply and its own error; a dead connection is retried once; a
timeout reaches every command of the batch, and the connection is not used again.
"""
from __future__ import annotations

import signal
from typing import Any, Callable

import gevent
import pytest
import redis
from flask import Flask
from redis.connection import Connection

from app.registry import EXTENSION
from app.store.batching import CommandBatcher

from .conftest import register_daemon


@pytest.fixture
def heartbeat_command(app: Flask) -> Callable[[str], tuple[Any, ...]]:
    store = app.extensions[EXTENSION].store
    assert store._functions.usable()

    def command(provider_id: str) -> tuple[Any, ...]:
        return ("FCALL", store._functions.name("heartbeat"), len(store.ctx.keys), *store.ctx.keys,
                *store.ctx.args, *store.heartbeat_args(provider_id))

    return command


@pytest.fixture
def batcher(app: Flask) -> CommandBatcher:
    library = app.extensions[EXTENSION].store._functions
    return library._batcher


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many FCALLs each write to Redis that carried any carried."""
    seen: list[int] = []
    original = Connection.send_packed_command

    def counting(self: Connection, command: Any, check_health: bool = True) -> None:
        calls = sum(bytes(chunk).count(b"FCALL") for chunk in (command if isinstance(command, list) else [command]))
        if calls:
            seen.append(calls)
        original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    return seen


def in_greenlets(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in greenlets started together; return each one's result or exception."""
    greenlets = [gevent.spawn(call) for call in calls]
    gevent.joinall(greenlets)
    return [g.value if g.successful() else g.exception for g in greenlets]


def test_heartbeats_sent_together_share_one_write_and_each_gets_its_own_reply(
    app: Flask, batcher: CommandBatcher, heartbeat_command: Callable[[str], tuple[Any, ...]], writes: list[int]
) -> None:
    ids = [register_daemon(app).id for _ in range(10)]
    replies = in_greenlets(*[lambda pid=pid: batcher.run(heartbeat_command(pid)) for pid in ids])
    assert writes == [10]
    for reply in replies:
        code, _now, (status, _seen, deadline, version) = reply
        assert code == 1 and status == "idle" and int(deadline) > 0
    redis_db = app.extensions[EXTENSION].redis
    assert all(redis_db.pttl(f"registry:lease:{pid}") > 0 for pid in ids)


def test_an_error_reply_reaches_only_its_own_command(
    app: Flask, batcher: CommandBatcher, heartbeat_command: Callable[[str], tuple[Any, ...]]
) -> None:
    pid = register_daemon(app).id
    good, bad, also_good = in_greenlets(
        lambda: batcher.run(heartbeat_command(pid)),
        lambda: batcher.run(("FCALL", "registry_no_such_function", 0)),
        lambda: batcher.run(heartbeat_command(pid)),
    )
    assert good[0] == 1 and also_good[0] == 1
    assert isinstance(bad, redis.ResponseError) and "function not found" in str(bad).lower()


def test_a_connection_that_died_is_retried_once(
    app: Flask, batcher: CommandBatcher, heartbeat_command: Callable[[str], tuple[Any, ...]], redis_db: redis.Redis
) -> None:
    ids = [register_daemon(app).id for _ in range(3)]
    assert batcher.run(heartbeat_command(ids[0]))[0] == 1  # a connection now waits, idle
    redis_db.client_kill_filter(_type="normal", skipme=True)  # as a restarted Redis would
    replies = in_greenlets(*[lambda pid=pid: batcher.run(heartbeat_command(pid)) for pid in ids])
    assert [reply[0] for reply in replies] == [1, 1, 1]


def test_a_timeout_reaches_every_command_of_the_batch_and_the_connection_is_dropped(
    make_app: Callable[..., Flask], redis_server: Any
) -> None:
    app = make_app(redis_timeout_s=0.2)
    store = app.extensions[EXTENSION].store
    library = store._functions
    assert library.usable()
    ids = [register_daemon(app).id for _ in range(3)]

    def command(pid: str) -> tuple[Any, ...]:
        return ("FCALL", library.name("heartbeat"), len(store.ctx.keys), *store.ctx.keys, *store.ctx.args,
                *store.heartbeat_args(pid))

    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        failures = in_greenlets(*[lambda pid=pid: library._batcher.run(command(pid)) for pid in ids])
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert all(isinstance(failure, redis.TimeoutError) for failure in failures)
    # Redis answers the late batch now; those replies must reach no one.
    later = in_greenlets(*[lambda pid=pid: library._batcher.run(command(pid)) for pid in reversed(ids)])
    assert [reply[0] for reply in later] == [1, 1, 1]
    assert [reply[2][0] for reply in later] == ["idle"] * 3
