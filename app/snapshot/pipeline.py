"""Overlap the stages of a long run: Redis, Python and PostgreSQL each work on their own batch.

Redis and PostgreSQL are other processes: while one of them executes a batch, this process
prepares the next one, so a run takes about as long as its slowest stage, not their sum.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


def ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Yield the items of `items`, which a thread produces up to `depth` items ahead.

    An exception in the producer is raised here, in order; leaving the loop early stops it.
    """
    out: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    thread = threading.Thread(target=produce, name="pipeline-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=30)


class Behind(Generic[R]):
    """Run one call at a time in a thread, in order, while the caller prepares the next."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline-behind")
        self._pending: Future[R] | None = None
        self.results: list[R] = []

    def submit(self, fn: Callable[..., R], *args: object) -> None:
        """Wait for the previous call (raising its error), then start `fn(*args)`."""
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        """Wait for the call in flight, if any; raise its error."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.results.append(pending.result())

    def close(self) -> None:
        """Let the call in flight end, without raising, and stop the thread."""
        if self._pending is not None:
            self._pending.exception()
            self._pending = None
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "Behind[R]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
