"""`make run`'s local Redis: started only when none answers and the URL is on this machine."""
from __future__ import annotations

from typing import Iterator

import pytest

from app.local_redis import ensure_redis, reachable

from .redis_server import free_port


@pytest.fixture
def started(tmp_path) -> Iterator[list]:
    """Processes a test started; terminated afterwards."""
    processes: list = []
    yield processes
    for process in processes:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def test_starts_a_redis_server_when_none_answers_at_a_local_url(tmp_path, started):
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert not reachable(url)
    process = ensure_redis(url, tmp_path / "var" / "redis")
    started.append(process)
    assert process is not None and process.poll() is None
    assert reachable(url)
    assert (tmp_path / "var" / "redis").is_dir()


def test_starts_nothing_when_redis_already_answers(tmp_path, redis_server, redis_db):
    assert ensure_redis(redis_server.url, tmp_path) is None


@pytest.mark.parametrize("template", ["redis://127.0.0.2:{port}/0", "rediss://127.0.0.1:{port}/0"])
def test_starts_nothing_for_another_host_or_scheme(tmp_path, template):
    # 127.0.0.2 is loopback too, but not the address the URL's server would be started on.
    url = template.format(port=free_port())
    assert ensure_redis(url, tmp_path) is None
    assert not reachable(url)
