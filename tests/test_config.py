"""Configuration: defaults, the YAML file, REGISTRY_<KEY> overrides, and bad values."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from app.config import NON_SETTING_ENV, ConfigError, Settings, config_path, default_yaml, load_settings

from .conftest import wait_until
from .redis_server import free_port

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "provider-registry")

# One valid non-default value per key, as it would be written in an environment variable.
OVERRIDES = {
    "port": ("9090", 9090),
    "bind_host": ("127.0.0.1", "127.0.0.1"),
    "workers": ("3", 3),
    "threads": ("4", 4),
    "log_level": ("debug", "debug"),
    "redis_url": ("redis://127.0.0.1:6390/2", "redis://127.0.0.1:6390/2"),
    "redis_timeout_s": ("0.25", 0.25),
    "key_prefix": ("other:", "other:"),
    "heartbeat_ttl_s": ("60", 60.0),
    "heartbeat_interval_s": ("20.5", 20.5),
    "sweep_interval_s": ("1", 1.0),
    "consul_address": ("10.0.0.1:8500", "10.0.0.1:8500"),
    "service_name": ("registry-b", "registry-b"),
    "service_id_prefix": ("reg-b-", "reg-b-"),
    "database_url": ("postgresql://u:p@127.0.0.1/db", "postgresql://u:p@127.0.0.1/db"),
}


def test_defaults_are_documented_values():
    s = Settings()
    assert (s.port, s.workers, s.log_level) == (8002, 2, "info")
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.key_prefix == "registry:"
    assert (s.heartbeat_ttl_s, s.heartbeat_interval_s) == (30.0, 10.0)
    assert s.consul_address == "127.0.0.1:8500"
    assert s.service_name == "provider-registry"
    assert s.service_id_prefix == "provider-registry-"
    assert s.database_url == ""


def test_missing_file_is_written_with_the_defaults(tmp_path):
    path = tmp_path / "configs" / "config.yaml"
    settings = load_settings(path=path, env={})
    assert settings == Settings()
    assert path.read_text() == default_yaml()
    written = yaml.safe_load(path.read_text())
    assert written == dataclasses.asdict(Settings())
    # The original README's keys, then ours.
    assert {"port", "log_level", "consul_address", "database_url", "service_name",
            "service_id_prefix", "redis_url", "key_prefix", "heartbeat_ttl_s",
            "heartbeat_interval_s", "workers"} <= set(written)


def test_committed_config_file_is_the_default_file():
    assert (REPO / "configs" / "config.yaml").read_text() == default_yaml()


def test_configuration_reference_lists_every_setting():
    text = (REPO / "docs" / "CONFIGURATION.md").read_text()
    section = text[text.index("## Configuration\n") : text.index("\n## Authentication")]
    documented = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)
    assert sorted(documented) == sorted(f.name for f in dataclasses.fields(Settings))


def test_existing_file_is_read_and_not_rewritten(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("port: 9000\nkey_prefix: 'b:'\n")
    settings = load_settings(path=path, env={})
    assert settings.port == 9000 and settings.key_prefix == "b:"
    assert settings.workers == Settings().workers
    assert path.read_text() == "port: 9000\nkey_prefix: 'b:'\n"


@pytest.mark.parametrize("key", sorted(OVERRIDES))
def test_registry_key_variable_overrides_the_file(tmp_path, key):
    path = tmp_path / "config.yaml"
    load_settings(path=path, env={})  # writes the defaults
    text, value = OVERRIDES[key]
    env = {f"REGISTRY_{key.upper()}": text}
    if key == "heartbeat_interval_s":
        env["REGISTRY_HEARTBEAT_TTL_S"] = "60"
    assert getattr(load_settings(path=path, env=env), key) == value


def test_registry_config_names_the_file(tmp_path):
    path = tmp_path / "elsewhere" / "registry.yaml"
    env = {"REGISTRY_CONFIG": str(path)}
    assert config_path(env) == path
    assert load_settings(env=env) == Settings()
    assert path.exists()
    path.write_text("workers: 5\n")
    assert load_settings(env=env).workers == 5


def test_default_config_path_is_configs_config_yaml():
    assert config_path({}) == Path("configs/config.yaml")


def test_public_dict_masks_passwords():
    settings = Settings(database_url="postgresql://user:secret@db/registry")
    assert settings.public_dict()["database_url"] == "postgresql://user:***@db/registry"


BAD_ENVIRONMENTS = [
    ("port_not_a_number", {"REGISTRY_PORT": "http"}, "port"),
    ("port_out_of_range", {"REGISTRY_PORT": "70000"}, "port"),
    ("port_fraction", {"REGISTRY_PORT": "80.5"}, "port"),
    ("port_address_without_a_port", {"REGISTRY_PORT": "127.0.0.1:"}, "listen address"),
    ("port_address_not_a_number", {"REGISTRY_PORT": ":http"}, "listen address"),
    ("port_address_bare_colon", {"REGISTRY_PORT": ":"}, "listen address"),
    ("port_address_ipv6_unbracketed", {"REGISTRY_PORT": "::1:8002"}, "listen address"),
    ("port_address_bad_host", {"REGISTRY_PORT": "my host:8002"}, "listen address"),
    ("port_address_out_of_range", {"REGISTRY_PORT": ":70000"}, "port must be between"),
    (
        "port_host_disagrees_with_bind_host",
        {"REGISTRY_PORT": "127.0.0.1:8002", "REGISTRY_BIND_HOST": "10.0.0.1"},
        "bind_host",
    ),
    ("workers_zero", {"REGISTRY_WORKERS": "0"}, "workers"),
    ("log_level_unknown", {"REGISTRY_LOG_LEVEL": "loud"}, "log_level"),
    ("redis_url_http", {"REGISTRY_REDIS_URL": "http://127.0.0.1:6379"}, "redis_url"),
    ("key_prefix_empty", {"REGISTRY_KEY_PREFIX": ""}, "key_prefix"),
    ("key_prefix_space", {"REGISTRY_KEY_PREFIX": "a b:"}, "key_prefix"),
    ("ttl_negative", {"REGISTRY_HEARTBEAT_TTL_S": "-1"}, "heartbeat_ttl_s"),
    (
        "ttl_below_a_millisecond",
        {"REGISTRY_HEARTBEAT_TTL_S": "0.0001", "REGISTRY_HEARTBEAT_INTERVAL_S": "0.00001"},
        "heartbeat_ttl_s",
    ),
    ("ttl_infinite", {"REGISTRY_HEARTBEAT_TTL_S": "inf"}, "heartbeat_ttl_s"),
    ("ttl_nan", {"REGISTRY_HEARTBEAT_TTL_S": "nan"}, "heartbeat_ttl_s"),
    ("sweep_interval_nan", {"REGISTRY_SWEEP_INTERVAL_S": "nan"}, "sweep_interval_s"),
    ("interval_not_shorter_than_ttl", {"REGISTRY_HEARTBEAT_INTERVAL_S": "30"}, "heartbeat_interval_s"),
    ("redis_timeout_zero", {"REGISTRY_REDIS_TIMEOUT_S": "0"}, "redis_timeout_s"),
]

BAD_FILES = [
    ("not_yaml", "port: [8080\n", "not valid YAML"),
    ("not_a_mapping", "- port\n- 8080\n", "must be a mapping"),
    ("unknown_key", "colour: red\n", "unknown key 'colour'"),
    ("misspelt_key", "heartbeat_tll_s: 5\n", "did you mean 'heartbeat_ttl_s'"),
    ("wrong_type", "workers: many\n", "workers"),
    ("list_for_string", "service_name: [a, b]\n", "service_name"),
    ("not_utf8", b"service_name: \xff\xfe\n", "not UTF-8"),
]


def run_cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    # Should a bad value be accepted, serve on loopback and a free port, not on 0.0.0.0:8080.
    safe = {
        "REGISTRY_BIND_HOST": "127.0.0.1",
        "REGISTRY_PORT": str(free_port()),
        "REGISTRY_CONSUL_ENABLED": "false",
        "XDG_RUNTIME_DIR": str(cwd),  # gunicorn's control socket
    }
    return subprocess.run(
        [CLI, *args], cwd=cwd, env={**clean, **safe, **env}, capture_output=True, text=True,
        timeout=30,
    )


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], mention: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("provider-registry: config error:")
    assert mention in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "env, mention", [c[1:] for c in BAD_ENVIRONMENTS], ids=[c[0] for c in BAD_ENVIRONMENTS]
)
def test_bad_value_is_a_config_error(tmp_path, env, mention):
    with pytest.raises(ConfigError, match=mention):
        load_settings(path=tmp_path / "config.yaml", env=env)


@pytest.mark.parametrize(
    "text, mention", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_file_is_a_config_error(tmp_path, text, mention):
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=mention):
        load_settings(path=path, env={})


# Each CLI run costs a second: a few cases through the real command, all cases above.
@pytest.mark.parametrize(
    "command, env, mention",
    [
        ("serve", {"REGISTRY_PORT": "http"}, "port"),
        ("serve", {"REGISTRY_HEARTBEAT_TTL_S": "inf"}, "heartbeat_ttl_s"),
        ("jobs", {"REGISTRY_REDIS_URL": "http://127.0.0.1:6379"}, "redis_url"),
        ("serve", {"REGISTRY_PORTT": "1"}, "did you mean 'REGISTRY_PORT'"),
    ],
    ids=["serve_port", "serve_ttl_infinite", "jobs_redis_url", "serve_misspelt_variable"],
)
def test_cli_exits_2_with_one_line_on_a_bad_variable(tmp_path, command, env, mention):
    assert_one_line_exit_2(run_cli(tmp_path, env, command), mention)


@pytest.mark.parametrize(
    "text, mention",
    [c[1:] for c in BAD_FILES if c[0] in ("not_yaml", "unknown_key", "not_utf8")],
    ids=["not_yaml", "unknown_key", "not_utf8"],
)
def test_cli_exits_2_with_one_line_on_a_bad_file(tmp_path, text, mention):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_one_line_exit_2(run_cli(tmp_path, {"REGISTRY_CONFIG": str(path)}, "serve"), mention)


def test_cli_exits_2_when_the_config_path_is_a_directory(tmp_path):
    result = run_cli(tmp_path, {"REGISTRY_CONFIG": str(tmp_path)}, "serve")
    assert_one_line_exit_2(result, "cannot read config")


def test_cli_writes_the_default_file_in_the_working_directory(tmp_path):
    # A bad variable stops startup after the file is written, so nothing is served.
    run_cli(tmp_path, {"REGISTRY_PORT": "http"}, "serve")
    assert (tmp_path / "configs" / "config.yaml").read_text() == default_yaml()


# -- the original Go server's configuration file -----------------------------------------------

# configs/config.yaml of the Go server this registry replaces, as it was written there.
GO_CONFIG = """\
port: "{port}"
log_level: "info"
consul_address: "localhost:8500"
database_url: "postgres://user:pass@localhost:5432/gpu_registry?sslmode=disable"
service_name: "provider-registry"
service_id_prefix: "provider-registry-"
"""


def test_the_original_go_config_file_loads_as_it_is(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(GO_CONFIG.format(port=":8002"))
    settings = load_settings(path=path, env={})
    assert (settings.port, settings.bind_host) == (8002, "0.0.0.0")
    assert settings.log_level == "info"
    assert settings.consul_address == "localhost:8500"
    assert settings.database_url == "postgres://user:pass@localhost:5432/gpu_registry?sslmode=disable"
    assert (settings.service_name, settings.service_id_prefix) == ("provider-registry", "provider-registry-")
    assert path.read_text() == GO_CONFIG.format(port=":8002")  # read, never rewritten


def test_the_original_config_binds_every_interface_on_8002(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(GO_CONFIG.format(port=":8002"))
    assert load_settings(path=path, env={}).bind_address() == "0.0.0.0:8002"
    # gunicorn's own configuration module reads the same file the same way; nothing binds here.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    result = subprocess.run(
        [sys.executable, "-c", "from app import gunicorn_conf; print(gunicorn_conf.bind)"],
        env={**clean, "REGISTRY_CONFIG": str(path)}, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['0.0.0.0:8002']"


@pytest.mark.parametrize(
    "port, bind_address",
    [
        (":8002", "0.0.0.0:8002"),
        ("127.0.0.1:8002", "127.0.0.1:8002"),
        ("localhost:9000", "localhost:9000"),
        ("[::1]:8002", "[::1]:8002"),
        ("8002", "0.0.0.0:8002"),
        (8002, "0.0.0.0:8002"),
    ],
)
def test_port_takes_a_number_or_a_go_listen_address_in_the_file(tmp_path, port, bind_address):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"port": port}))
    assert load_settings(path=path, env={}).bind_address() == bind_address


@pytest.mark.parametrize(
    "port, bind_address", [(":9000", "0.0.0.0:9000"), ("127.0.0.1:9000", "127.0.0.1:9000")]
)
def test_registry_port_takes_a_go_listen_address_too(tmp_path, port, bind_address):
    settings = load_settings(path=tmp_path / "config.yaml", env={"REGISTRY_PORT": port})
    assert settings.bind_address() == bind_address


def test_a_port_without_a_host_keeps_the_bind_host(tmp_path):
    env = {"REGISTRY_PORT": ":9000", "REGISTRY_BIND_HOST": "127.0.0.1"}
    assert load_settings(path=tmp_path / "config.yaml", env=env).bind_address() == "127.0.0.1:9000"


def test_a_later_bind_host_overrides_the_host_of_the_files_port(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text('port: "10.0.0.1:8002"\n')
    settings = load_settings(path=path, env={"REGISTRY_BIND_HOST": "127.0.0.1"})
    assert settings.bind_address() == "127.0.0.1:8002"


@pytest.mark.parametrize(
    "given, level",
    [("INFO", "info"), ("Debug", "debug"), ("WARNING", "warning"), ("warn", "warning"),
     ("trace", "debug"), ("fatal", "critical"), ("panic", "critical"), ("ERROR", "error")],
)
def test_log_level_is_read_in_any_case_and_in_go_spellings(tmp_path, given, level):
    path = tmp_path / "config.yaml"
    path.write_text(f"log_level: {given}\n")
    assert load_settings(path=path, env={}).log_level == level
    assert load_settings(path=path, env={"REGISTRY_LOG_LEVEL": given}).log_level == level


def test_serve_starts_from_the_original_config_on_its_go_style_port(tmp_path, redis_server):
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(GO_CONFIG.format(port=f":{port}"))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env = {
        **clean,
        "REGISTRY_CONFIG": str(path),
        # The file as it is; the variables only keep the test to itself: its own Redis,
        # loopback, no Consul agent or PostgreSQL of this machine.
        "REGISTRY_REDIS_URL": redis_server.url,
        "REGISTRY_BIND_HOST": "127.0.0.1",
        "REGISTRY_CONSUL_ENABLED": "false",
        "REGISTRY_SNAPSHOT_INTERVAL_S": "0",
        "REGISTRY_WORKERS": "1",
        "XDG_RUNTIME_DIR": str(tmp_path),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([CLI, "serve"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    try:
        assert wait_until(healthy, timeout=30, interval=0.1), log.read_text()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert path.read_text() == GO_CONFIG.format(port=f":{port}")


# -- REGISTRY_* variables that name no setting --------------------------------------------------


@pytest.mark.parametrize(
    "name, suggestion",
    [
        ("REGISTRY_PORTT", "REGISTRY_PORT"),
        ("REGISTRY_HEARTBEAT_TTL", "REGISTRY_HEARTBEAT_TTL_S"),
        ("REGISTRY_REDIS_ULR", "REGISTRY_REDIS_URL"),
        ("REGISTRY_CONFIGG", "REGISTRY_CONFIG"),
    ],
)
def test_an_unknown_registry_variable_stops_startup_naming_the_closest(tmp_path, name, suggestion):
    with pytest.raises(ConfigError, match=f"unknown environment variable {name}; did you mean '{suggestion}'"):
        load_settings(path=tmp_path / "config.yaml", env={name: "1"})


def test_an_unknown_variable_far_from_any_name_is_refused_without_a_guess(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown environment variable REGISTRY_ZZZ \(") as caught:
        load_settings(path=tmp_path / "config.yaml", env={"REGISTRY_ZZZ": "1"})
    assert "did you mean" not in str(caught.value)


@pytest.mark.parametrize("name", sorted(NON_SETTING_ENV))
def test_variables_that_are_not_settings_are_allowed(tmp_path, name):
    load_settings(path=tmp_path / "config.yaml", env={name: str(tmp_path / "config.yaml")})


def test_every_registry_variable_the_repository_names_is_a_setting_or_listed():
    root = Path(__file__).resolve().parent.parent
    named: set[str] = set()
    for path in [*root.glob("*.md"), *root.glob("docs/*.md"), *root.glob("app/**/*.py"),
                 *root.glob("tests/*.py"), *root.glob("bench/*.py"), root / "Makefile",
                 root / "Dockerfile", root / "docker-compose.yml"]:
        if path.is_file() and path.name != "test_config.py":  # this file names typos on purpose
            named |= set(re.findall(r"\bREGISTRY_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    settings = {f"REGISTRY_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    assert named - settings - set(NON_SETTING_ENV) == set()
@pytest.mark.parametrize(
    "env, mention",
    [
        ({"REGISTRY_REDIS_SENTINELS": "127.0.0.1:26379"}, "redis_master_name"),
        ({"REGISTRY_REDIS_SENTINELS": "127.0.0.1:26379", "REGISTRY_REDIS_MASTER_NAME": "m",
          "REGISTRY_REDIS_URL": "redis://10.0.0.1:6379/0"}, "redis_url must be empty"),
        ({"REGISTRY_REDIS_SENTINELS": "sentinel-1", "REGISTRY_REDIS_MASTER_NAME": "m"}, "host:port"),
        ({"REGISTRY_REDIS_SENTINELS": "a:1", "REGISTRY_REDIS_MASTER_NAME": "m",
          "REGISTRY_REDIS_CLUSTER_NODES": "b:2"}, "not both"),
        ({"REGISTRY_REDIS_CLUSTER_NODES": "127.0.0.1:7000"}, "hash tag"),
        ({"REGISTRY_REDIS_CLUSTER_NODES": "127.0.0.1:7000", "REGISTRY_KEY_PREFIX": "{}:"}, "hash tag"),
        ({"REGISTRY_REDIS_READ_FROM_REPLICAS": "true"}, "redis_read_from_replicas"),
        ({"REGISTRY_REDIS_WAIT_REPLICAS": "-1"}, "redis_wait_replicas"),
        ({"REGISTRY_REDIS_WAIT_REPLICAS": "1", "REGISTRY_REDIS_WAIT_TIMEOUT_MS": "1000"},
         "shorter than redis_timeout_s"),
    ],
    ids=["sentinels_without_name", "sentinels_and_url", "sentinel_without_port", "sentinels_and_cluster",
         "cluster_without_hash_tag", "cluster_empty_hash_tag", "replica_reads_on_one_server",
         "negative_wait", "wait_past_the_socket_timeout"],
)
def test_redis_topology_settings_are_checked(tmp_path, env, mention):
    with pytest.raises(ConfigError, match=mention):
        load_settings(path=tmp_path / "c.yaml", env=env)


def test_sentinels_and_cluster_nodes_take_the_default_redis_url_as_unset(tmp_path):
    settings = load_settings(path=tmp_path / "c.yaml", env={
        "REGISTRY_REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26379", "REGISTRY_REDIS_MASTER_NAME": "registry",
    })
    assert settings.redis_sentinels == ["10.0.0.1:26379", "10.0.0.2:26379"]
    cluster = load_settings(path=tmp_path / "d.yaml", env={
        "REGISTRY_REDIS_CLUSTER_NODES": "10.0.0.1:7000", "REGISTRY_KEY_PREFIX": "{registry}:",
        "REGISTRY_REDIS_URL": "",
    })
    assert cluster.redis_cluster_nodes == ["10.0.0.1:7000"]


def test_public_dict_masks_redis_passwords():
    shown = Settings(redis_password="s3cret", redis_sentinel_password="other").public_dict()
    assert shown["redis_password"] == shown["redis_sentinel_password"] == "***"
