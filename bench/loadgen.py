"""Run wrk against a loopback URL and read the line its Lua script reports."""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LUA = Path(__file__).resolve().parent / "lua"
RESULT_PREFIX = "BENCH_RESULT "


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: requests, errors and latency percentiles (microseconds)."""

    requests: int
    duration_us: int
    status_errors: int
    socket_errors: int
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    mean_us: float
    bytes: int = 0

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors


def parse_output(stdout: str) -> WrkResult:
    """Return the result that report.lua printed.

    Raises:
        ValueError: no result line in the output.
    """
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return WrkResult(**json.loads(line[len(RESULT_PREFIX):]))
    raise ValueError(f"wrk printed no {RESULT_PREFIX.strip()} line:\n{stdout[-2000:]}")


def wrk_binary() -> str:
    """Return the path of wrk.

    Raises:
        RuntimeError: wrk is not installed.
    """
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: apt-get update && apt-get install -y wrk")
    return found


def wrk_command(
    url: str,
    script: str,
    *,
    seconds: float,
    threads: int,
    connections: int,
    script_args: tuple[str, ...] = (),
    headers: tuple[str, ...] = (),
) -> list[str]:
    """Return the wrk command line for one bounded run against a loopback URL.

    Raises:
        ValueError: the URL is not on loopback, or the shape of the run is impossible.
    """
    host = urlsplit(url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise ValueError(f"the bench only sends traffic to loopback, not to {host!r}")
    if seconds <= 0 or threads < 1 or connections < threads:
        raise ValueError("need seconds > 0, threads >= 1 and connections >= threads")
    command = [
        wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "5s", "-s", str(LUA / script),
    ]
    for header in headers:
        command += ["-H", header]
    command.append(url)
    if script_args:
        command += ["--", *script_args]
    return command


def run_wrk(
    url: str,
    script: str,
    *,
    seconds: float,
    threads: int,
    connections: int,
    script_args: tuple[str, ...] = (),
    headers: tuple[str, ...] = (),
) -> WrkResult:
    """Run wrk for `seconds` and return what it measured (killed if it overruns by 30 s)."""
    command = wrk_command(
        url, script, seconds=seconds, threads=threads, connections=connections,
        script_args=script_args, headers=headers,
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout[-500:]}")
    return parse_output(done.stdout)
