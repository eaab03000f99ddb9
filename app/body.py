"""The request body, read within a deadline: a slow body is a 408, a broken one a 400.

gunicorn hands the app a body that reads from the socket for as long as the client cares to
send. A client sending a byte a second would hold a connection (and, with thread workers, a
thread) indefinitely, so every read here is bounded by one deadline per request.
"""
from __future__ import annotations

import socket
import time
from typing import Any, Callable, Iterable, Iterator

from gunicorn.http.errors import ParseException

from .errors import MalformedBody, RequestTimeout

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# Set in the environ when the body failed, so that the connection is not reused.
BROKEN_KEY = "registry.body_broken"


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))


class DeadlineInput:
    """`wsgi.input` whose reads raise RequestTimeout past the deadline, MalformedBody on bad framing."""

    def __init__(self, stream: Any, environ: dict[str, Any], timeout_s: float, cooperative: bool) -> None:
        self._stream = stream
        self._environ = environ
        self._timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s
        self._cooperative = cooperative
        self._socket: socket.socket | None = environ.get("gunicorn.socket")

    def read(self, size: int | None = -1) -> bytes:
        return self._bounded(self._stream.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._bounded(self._stream.readline, size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return self._bounded(self._stream.readlines, hint)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def _bounded(self, call: Callable[[Any], Any], size: Any) -> Any:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out()
        try:
            if self._cooperative:
                return self._within_gevent(call, size, remaining)
            return self._within_socket_timeout(call, size, remaining)
        except ParseException as exc:
            self._environ[BROKEN_KEY] = True
            raise MalformedBody(f"request body is malformed: {exc}") from None

    def _within_gevent(self, call: Callable[[Any], Any], size: Any, remaining: float) -> Any:
        import gevent

        # A total bound: the timer interrupts the recv wherever gunicorn's reader loops.
        timer = gevent.Timeout(remaining)
        timer.start()
        try:
            return call(size)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise self._timed_out() from None
        finally:
            timer.close()

    def _within_socket_timeout(self, call: Callable[[Any], Any], size: Any, remaining: float) -> Any:
        # Without gevent the bound is per recv: gunicorn's reader loops over recv inside one
        # call, so a client trickling bytes is only stopped between calls (docs/RELIABILITY.md).
        sock = self._socket
        if sock is None:
            return call(size)
        previous = sock.gettimeout()
        sock.settimeout(remaining)
        try:
            return call(size)
        except TimeoutError:
            raise self._timed_out() from None
        finally:
            sock.settimeout(previous)

    def _timed_out(self) -> RequestTimeout:
        self._environ[BROKEN_KEY] = True
        return RequestTimeout(f"request body did not arrive within {self._timeout_s:g} s")


class BodyDeadline:
    """WSGI middleware: bound the body's reads, and close a connection whose body failed."""

    def __init__(self, app: WSGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.cooperative = _gevent_patched()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["wsgi.input"] = DeadlineInput(
            environ["wsgi.input"], environ, self.timeout_s, self.cooperative
        )
        result = self.app(environ, start_response)
        if environ.get(BROKEN_KEY):
            _stop_reading(environ.get("gunicorn.socket"))
        return result


def _stop_reading(sock: socket.socket | None) -> None:
    # The rest of a timed-out or malformed body is unread, so where the next request starts is
    # unknown; gunicorn ignores a `Connection: close` from the app. Shutting the read side makes
    # its next read see EOF: it sends this response, then closes instead of parsing the rest.
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
