"""Malformed HTTP, sent over raw sockets to a real gunicorn: every answer is the JSON error shape."""
from __future__ import annotations

import json
import socket
from typing import Any, Iterator

import pytest

from .gunicorn_server import GunicornServer
from .redis_server import RedisServer

HEALTH = b"GET /health HTTP/1.1\r\nHost: registry\r\n"
POST = b"POST /providers HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\n"

# name: (raw request, expected status)
MALFORMED = {
    "nul_in_request_line": (b"GET /hea\x00lth HTTP/1.1\r\nHost: registry\r\n\r\n", 400),
    "non_ascii_in_request_line": (b"GET /h\xffealth HTTP/1.1\r\nHost: registry\r\n\r\n", 400),
    "nul_in_header_value": (HEALTH + b"X-Trace: a\x00b\r\n\r\n", 400),
    "non_ascii_in_header_name": (HEALTH + b"X-Tr\xe4ce: a\r\n\r\n", 400),
    "space_in_header_name": (HEALTH + b"X Trace: a\r\n\r\n", 400),
    "over_long_request_line": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: registry\r\n\r\n", 414),
    "over_long_header": (HEALTH + b"X-Trace: " + b"a" * 9000 + b"\r\n\r\n", 431),
    "too_many_headers": (HEALTH + b"".join(b"X-H%d: a\r\n" % i for i in range(200)) + b"\r\n", 431),
    "non_numeric_content_length": (POST + b"Content-Length: abc\r\n\r\n", 400),
    "negative_content_length": (POST + b"Content-Length: -1\r\n\r\n", 400),
    "two_content_lengths": (POST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    "chunked_and_content_length": (
        POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400
    ),
    "unknown_transfer_coding": (POST + b"Transfer-Encoding: foo\r\n\r\n", 501),
    "invalid_http_version": (b"GET /health HTTP/9.9\r\nHost: registry\r\n\r\n", 400),
    "garbage_request_line": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
    "bad_method": (b"G(T /health HTTP/1.1\r\nHost: registry\r\n\r\n", 400),
    "obsolete_line_folding": (HEALTH + b"X-Trace: a\r\n b\r\n\r\n", 400),
}


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[GunicornServer]:
    server = GunicornServer(redis_server.url, worker_class="gevent")
    server.start()
    yield server
    server.stop()


def exchange(server: GunicornServer, raw: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; return the status, headers (lower-case names) and body of the one answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def json_error(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers["content-type"] == "application/json"
    payload = json.loads(body)
    assert set(payload) == {"error", "code", "details"}
    assert isinstance(payload["error"], str) and isinstance(payload["code"], str)
    return payload


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_is_answered_in_the_json_error_shape(server: GunicornServer, case: str) -> None:
    raw, expected = MALFORMED[case]
    status, headers, body = exchange(server, raw)
    assert status == expected, body
    json_error(headers, body)


def test_request_line_too_long_says_uri_too_long(server: GunicornServer) -> None:
    _, headers, body = exchange(server, MALFORMED["over_long_request_line"][0])
    assert json_error(headers, body)["code"] == "uri_too_long"


def test_malformed_chunked_body_is_a_400_not_a_500(server: GunicornServer) -> None:
    raw = POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    status, headers, body = exchange(server, raw)
    assert status == 400
    assert json_error(headers, body)["code"] == "malformed_body"
    assert "Traceback" not in server.log()


def test_chunk_without_its_terminator_is_a_400(server: GunicornServer) -> None:
    raw = POST + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n"
    status, headers, body = exchange(server, raw)
    assert status == 400
    assert json_error(headers, body)["code"] == "malformed_body"


def test_connection_closes_after_a_malformed_chunked_body(server: GunicornServer) -> None:
    # Only one answer: the rest of the broken body must never be parsed as a second request.
    raw = POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nGET /health HTTP/1.1\r\nHost: r\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 ") == 1
    assert data.startswith(b"HTTP/1.1 400")


def test_options_answers_204_with_the_allowed_methods(server: GunicornServer) -> None:
    status, headers, body = exchange(server, b"OPTIONS /providers HTTP/1.1\r\nHost: registry\r\n\r\n")
    assert status == 204
    assert body == b""
    assert {m.strip() for m in headers["allow"].split(",")} == {"GET", "HEAD", "POST", "OPTIONS"}
    assert "content-type" not in headers


def test_options_on_a_provider_lists_its_methods(server: GunicornServer) -> None:
    path = b"/providers/00000000-0000-4000-8000-000000000000"
    status, headers, _ = exchange(server, b"OPTIONS " + path + b" HTTP/1.1\r\nHost: registry\r\n\r\n")
    assert status == 204
    assert {"GET", "PUT", "DELETE", "OPTIONS"} <= {m.strip() for m in headers["allow"].split(",")}


def test_unknown_path_and_wrong_method_stay_json(server: GunicornServer) -> None:
    status, headers, body = exchange(server, b"GET /nowhere HTTP/1.1\r\nHost: registry\r\n\r\n")
    assert status == 404 and json_error(headers, body)["code"] == "not_found"
    status, headers, body = exchange(server, b"DELETE /providers HTTP/1.1\r\nHost: registry\r\n\r\n")
    assert status == 405 and json_error(headers, body)["code"] == "method_not_allowed"
    assert "POST" in headers["allow"]


def test_a_header_that_never_ends_is_dropped(server: GunicornServer) -> None:
    # A slowloris: the request line and headers arrive a byte at a time and never finish.
    with socket.create_connection(("127.0.0.1", server.port), timeout=0.3) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: registry\r\n")
        closed = False
        for _ in range(40):  # at most ~12 s; gunicorn's keepalive (2 s) bounds the headers
            try:
                sock.sendall(b"X")
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    assert closed


# gunicorn runs `sync` with more than one thread as gthread: sync itself needs threads 1.
@pytest.mark.parametrize(("worker_class", "threads"), [("gthread", 4), ("sync", 1), ("sync", 4)])
def test_thread_workers_refuse_in_json_and_time_out_a_stalled_body(
    redis_server: RedisServer, worker_class: str, threads: int
) -> None:
    other = GunicornServer(redis_server.url, worker_class=worker_class, threads=threads, body_timeout_s=1)
    other.start()
    try:
        status, headers, body = exchange(other, MALFORMED["nul_in_header_value"][0])
        assert status == 400 and json_error(headers, body)["code"] == "bad_request"
        status, headers, body = exchange(other, MALFORMED["over_long_header"][0])
        assert status == 431 and json_error(headers, body)
        # A body that stops arriving: on these workers the bound is per read (docs/RELIABILITY.md).
        stalled = b"PUT /providers/00000000-0000-4000-8000-000000000000/status HTTP/1.1\r\n"
        stalled += b"Host: registry\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{"
        status, headers, body = exchange(other, stalled)
        assert status == 408 and json_error(headers, body)["code"] == "request_timeout"
    finally:
        other.stop()
