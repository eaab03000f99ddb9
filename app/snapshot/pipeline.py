"""Overlap the stages of a long run: Redis, Python and PostgreSQL each work on their own batch.

Redis and PostgreSQL are other processes: while one of them executes a batch, this process
prepares the next one, so a run takes about as long as its slowest stage, not their sum. The
Python work stays in the caller's thread: a second thread doing Python work only takes turns
with it at the GIL, and waits for the GIL again after each of its blocking reads.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, TypeVar

R = TypeVar("R")


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
