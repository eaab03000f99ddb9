"""`provider-registry snapshot` and `restore`: exit status, one line on failure, never a traceback.

A few tests run the real command in a subprocess; the others call `main()` in this process.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from app.snapshot.progress import Progress

from .conftest import Providers, sql
from .redis_server import RedisServer, free_port


def run_cli(tmp_path: Path, redis_url: str, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "REGISTRY_CONFIG": str(tmp_path / "config.yaml"),
        "REGISTRY_REDIS_URL": redis_url,
        "REGISTRY_DATABASE_URL": database_url,
        "REGISTRY_LOG_LEVEL": "warning",
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )


class Cli:
    """Run the command in this process (fast), with the environment a real run would have."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        import app.logs

        self.capsys = capsys
        monkeypatch.setenv("REGISTRY_CONFIG", str(tmp_path / "config.yaml"))
        monkeypatch.setenv("REGISTRY_LOG_LEVEL", "warning")
        # Leave the root logger to pytest.
        monkeypatch.setattr(app.logs, "configure_logging", lambda level: None)
        self.monkeypatch = monkeypatch

    def __call__(self, redis_url: str, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
        from app.cli import main

        self.monkeypatch.setenv("REGISTRY_REDIS_URL", redis_url)
        self.monkeypatch.setenv("REGISTRY_DATABASE_URL", database_url)
        self.capsys.readouterr()
        try:
            status = main(list(args))
        except SystemExit as exc:
            status = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return subprocess.CompletedProcess(list(args), status, out, err)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Cli:
    return Cli(monkeypatch, capsys, tmp_path)


def one_line_failure(done: subprocess.CompletedProcess[str], status: int = 1) -> str:
    assert done.returncode == status, done
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_snapshot_then_restore_round_trip_through_the_commands(
    tmp_path: Path, redis_server: RedisServer, providers: Providers, redis_db: redis.Redis,
    database_url: str,
) -> None:
    ids = [providers.register(name=f"rig-{i}")["id"] for i in range(3)]

    taken = run_cli(tmp_path, redis_server.url, database_url, "snapshot")
    assert taken.returncode == 0, taken
    assert "snapshot 1: 3 providers, 3 GPUs (3 added, 0 changed, 0 removed)" in taken.stdout

    redis_db.flushall()
    restored = run_cli(tmp_path, redis_server.url, database_url, "restore")
    assert restored.returncode == 0, restored
    assert "restored 3 providers from snapshot 1" in restored.stdout
    assert providers.ids("status=offline") == sorted(ids)


def test_restore_into_a_redis_with_providers_exits_1_unless_forced(
    cli: Cli, redis_server: RedisServer, providers: Providers, redis_db: redis.Redis,
    database_url: str,
) -> None:
    snapshotted = providers.register(name="snapshotted")["id"]
    assert cli(redis_server.url, database_url, "snapshot").returncode == 0
    redis_db.flushall()
    providers.register(name="live")

    refused = cli(redis_server.url, database_url, "restore")
    assert "Redis already holds 1 providers" in one_line_failure(refused)

    forced = cli(redis_server.url, database_url, "restore", "--force")
    assert forced.returncode == 0, forced
    assert providers.ids() == [snapshotted]


def test_snapshot_after_a_wipe_exits_1_until_forced(
    cli: Cli, redis_server: RedisServer, providers: Providers, redis_db: redis.Redis,
    database_url: str,
) -> None:
    providers.register()
    assert cli(redis_server.url, database_url, "snapshot").returncode == 0
    redis_db.flushall()

    refused = cli(redis_server.url, database_url, "snapshot")
    assert "snapshot refused" in one_line_failure(refused)
    assert sql(database_url, "SELECT count(*) FROM providers") == [(1,)]

    forced = cli(redis_server.url, database_url, "snapshot", "--force")
    assert forced.returncode == 0, forced
    assert sql(database_url, "SELECT count(*) FROM providers") == [(0,)]


def test_restore_dry_run_exits_0_and_changes_nothing(
    cli: Cli, redis_server: RedisServer, providers: Providers, redis_db: redis.Redis, database_url: str
) -> None:
    providers.register()
    assert cli(redis_server.url, database_url, "snapshot").returncode == 0
    redis_db.flushall()

    dry = cli(redis_server.url, database_url, "restore", "--dry-run")

    assert dry.returncode == 0, dry
    assert "dry run: would restore 1 providers from snapshot 1" in dry.stdout
    assert redis_db.dbsize() == 0


def test_snapshot_exits_1_with_one_line_when_postgresql_is_unreachable(
    tmp_path: Path, redis_server: RedisServer, redis_db: redis.Redis
) -> None:
    closed = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/registry"

    line = one_line_failure(run_cli(tmp_path, redis_server.url, closed, "snapshot"))

    assert "PostgreSQL unreachable at postgresql://postgres:***@127.0.0.1" in line
    assert "secret" not in line


@pytest.mark.parametrize("command", [["restore"], ["restore", "--dry-run"]])
def test_restore_exits_1_with_one_line_when_postgresql_is_unreachable(
    cli: Cli, redis_server: RedisServer, redis_db: redis.Redis, command: list[str]
) -> None:
    closed = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/registry"

    line = one_line_failure(cli(redis_server.url, closed, *command))

    assert "PostgreSQL unreachable at postgresql://postgres:***@127.0.0.1" in line
    assert "secret" not in line


@pytest.mark.parametrize("command", [["snapshot"], ["restore"]])
def test_commands_exit_1_with_one_line_when_redis_is_unreachable(
    cli: Cli, database_url: str, command: list[str]
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"

    line = one_line_failure(cli(closed, database_url, *command))

    assert f"Redis unavailable at {closed}" in line


def test_commands_exit_2_without_a_database_url(cli: Cli, redis_server: RedisServer) -> None:
    line = one_line_failure(cli(redis_server.url, "", "snapshot"), status=2)

    assert "database_url is not set" in line


class FakeTerminal:
    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_draws_a_bar_on_a_terminal() -> None:
    terminal = FakeTerminal()
    progress = Progress("restore", 4, stream=terminal)  # type: ignore[arg-type]

    progress.advance(2)
    progress.advance(2)
    progress.close()

    assert "\rrestore [###############...............] 2/4" in terminal.text
    assert "restore [##############################] 4/4" in terminal.text
    assert terminal.text.endswith("\n")


def test_progress_logs_periodic_lines_when_not_on_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    progress = Progress("snapshot", 10, stream=None, interval_s=0)

    with caplog.at_level("INFO"):
        progress.advance(5)
        progress.advance(5)
        progress.close()

    assert [r.getMessage() for r in caplog.records] == ["snapshot: 5 of 10", "snapshot: 10 of 10"]
