from __future__ import annotations

import json
import subprocess

import pytest

from agent.config import ConfigError, load_config, reference_markdown
from tests.helpers import PYTHON


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_",))}
    full_env.update(env or {})
    return subprocess.run(
        [PYTHON, "-m", "agent.cli", *args], capture_output=True, text=True, env=full_env, timeout=60
    )


def test_defaults_follow_dynamo_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_HTTP_PORT", "8123")
    monkeypatch.setenv("DYN_SYSTEM_PORT", "9191")
    monkeypatch.setenv("DYN_SYSTEM_HEALTH_PATH", "/healthz")
    monkeypatch.setenv("DYN_SYSTEM_LIVE_PATH", "/livez")
    monkeypatch.setenv("DYN_CANARY_WAIT_TIME", "7")
    monkeypatch.setenv("DYN_HEALTH_CHECK_REQUEST_TIMEOUT", "4")
    config = load_config(environ={})
    assert config.frontend_url == "http://127.0.0.1:8123"
    assert config.worker_system_urls == ["http://127.0.0.1:9191"]
    assert config.worker_health_path == "/healthz"
    assert config.worker_live_path == "/livez"
    assert config.canary_wait == 7.0
    assert config.canary_timeout == 4.0


def test_precedence_defaults_yaml_env_flags(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DYN_HTTP_PORT", "DYN_SYSTEM_PORT"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(
        "listen_port: 9500\ndynamo_interval: 2s\nrole: worker\nprocess_patterns: [foo, 'bar.*']\n"
    )
    config = load_config(str(path), environ={})
    assert (config.listen_port, config.dynamo_interval, config.role) == (9500, 2.0, "worker")
    assert config.process_patterns == ["foo", "bar.*"]
    config = load_config(str(path), environ={"DYN_SIDECAR_LISTEN_PORT": "9600"})
    assert config.listen_port == 9600 and config.dynamo_interval == 2.0
    config = load_config(
        str(path), environ={"DYN_SIDECAR_LISTEN_PORT": "9600"}, overrides={"listen_port": "9700"}
    )
    assert config.listen_port == 9700


@pytest.mark.parametrize(
    ("environ", "key", "origin"),
    [
        ({"DYN_SIDECAR_LISTEN_PORT": "http"}, "listen_port", "env DYN_SIDECAR_LISTEN_PORT"),
        ({"DYN_SIDECAR_DYNAMO_INTERVAL": "-1"}, "dynamo_interval", "env DYN_SIDECAR_DYNAMO_INTERVAL"),
        ({"DYN_SIDECAR_FRONTEND_URL": "ftp://x"}, "frontend_url", "env DYN_SIDECAR_FRONTEND_URL"),
        ({"DYN_SIDECAR_ROLE": "router"}, "role", "env DYN_SIDECAR_ROLE"),
        ({"DYN_SIDECAR_PASSTHROUGH": "maybe"}, "passthrough", "env DYN_SIDECAR_PASSTHROUGH"),
        (
            {"DYN_SIDECAR_PASSTHROUGH_DENY": "dynamo_(("},
            "passthrough_deny",
            "env DYN_SIDECAR_PASSTHROUGH_DENY",
        ),
    ],
)
def test_bad_values_name_key_value_and_form(environ: dict[str, str], key: str, origin: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ=environ)
    assert caught.value.key == key
    assert origin in str(caught.value)
    assert "expected" in str(caught.value)


def test_bad_dynamo_env_is_reported_by_its_own_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_CANARY_WAIT_TIME", "soon")
    with pytest.raises(ConfigError) as caught:
        load_config(environ={})
    assert caught.value.key == "canary_wait"
    assert "DYN_CANARY_WAIT_TIME" in str(caught.value)


def test_yaml_unknown_key_and_bad_yaml(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listen_prot: 9500\n")
    with pytest.raises(ConfigError, match="listen_prot"):
        load_config(str(path), environ={})
    path.write_text("listen_port: [\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_config(str(path), environ={})
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(path), environ={})
    with pytest.raises(ConfigError, match="readable"):
        load_config(str(tmp_path / "missing.yaml"), environ={})


def test_cli_config_error_is_one_line_exit_64_no_traceback() -> None:
    result = run_cli("run", "--listen-port", "99999")
    assert result.returncode == 64
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "listen_port" in lines[0] and "99999" in lines[0] and "0 to 65535" in lines[0]


def test_cli_env_error_exit_64() -> None:
    result = run_cli("check-config", env={"DYN_SYSTEM_PORT": "nine"})
    assert result.returncode == 64
    assert "DYN_SYSTEM_PORT" in result.stderr and "Traceback" not in result.stderr


def test_check_config_prints_effective_config_with_secrets_redacted() -> None:
    result = run_cli(
        "check-config",
        "--role",
        "frontend",
        env={"DYN_SIDECAR_LISTEN_PORT": "9555", "DYN_SIDECAR_AUTH_TOKEN": "s3cret"},
    )
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["role"] == "frontend" and effective["listen_port"] == 9555
    assert effective["auth_token"] == "<redacted>"
    assert "s3cret" not in result.stdout


def test_reference_table_lists_every_key() -> None:
    table = reference_markdown()
    import dataclasses

    from agent.config import Config

    for field in dataclasses.fields(Config):
        assert f"`{field.name}`" in table
