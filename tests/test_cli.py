"""The command line as an operator runs it: real subprocesses, real ports, real signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers import free_port, wait_for_sync
from tests.procs import ENV, PYTHON, http_get, http_post, start_sidecar


def start_cli_sidecar(ports: dict[str, int], *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc, url = start_sidecar(ports, "--drain-timeout", "3", "--drain-settle", "0.5", *extra)
    return proc, int(url.rsplit(":", 1)[1])


def test_run_serves_and_exits_zero_on_sigterm(sim_process) -> None:
    proc, port = start_cli_sidecar(sim_process)
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and b"dynamo_sidecar_collector_success" in body
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines, out
    # Logs use Dynamo's JSONL field names.
    assert {"time", "level", "target", "message"} <= set(lines[0])
    assert any(line["message"] == "sidecar listening" for line in lines)
    assert lines[0]["time"].endswith("Z") and lines[0]["level"] in {"INFO", "WARN", "ERROR", "DEBUG"}


def test_diagnose_exit_codes(sim_process) -> None:
    proc, port = start_cli_sidecar(sim_process)
    try:
        url = f"http://127.0.0.1:{port}"
        ok = subprocess.run(
            [PYTHON, "-m", "agent.cli", "diagnose", "--url", url],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=30,
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert ok.stdout.startswith("dynamo-sidecar diagnose: OK")

        def exits(code: int) -> subprocess.CompletedProcess[str] | None:
            run = subprocess.run(
                [PYTHON, "-m", "agent.cli", "diagnose", "--url", url],
                capture_output=True,
                text=True,
                env=ENV,
                timeout=30,
            )
            return run if run.returncode == code else None

        # A warning and nothing worse: exit 1.
        http_post(f"http://127.0.0.1:{sim_process['control']}/faults", {"worker_notready": True})
        warning = wait_for_sync(lambda: exits(1), timeout=15, what="diagnose exit 1")
        assert "[WARNING]" in warning.stdout and "[CRITICAL]" not in warning.stdout
        http_post(f"http://127.0.0.1:{sim_process['control']}/frontend/stop")
        result = wait_for_sync(lambda: exits(2), timeout=15, what="diagnose exit 2")
        assert "[CRITICAL]" in result.stdout and "refuses connections" in result.stdout
        as_json = subprocess.run(
            [PYTHON, "-m", "agent.cli", "diagnose", "--url", url, "--format", "json"],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=30,
        )
        assert json.loads(as_json.stdout)["status"] == "critical"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    unreachable = subprocess.run(
        [PYTHON, "-m", "agent.cli", "diagnose", "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
    )
    assert unreachable.returncode == 3 and "cannot read" in unreachable.stderr


def test_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [PYTHON, "-m", "agent.cli", "run", "--listen-host", "127.0.0.1", "--listen-port", str(port)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=30,
        )
    assert result.returncode == 64
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_demo_end_to_end() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "agent.cli", "demo", "--port", str(port), "--duration", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert proc.stdout is not None
        urls = json.loads(proc.stdout.readline())
        base = urls["sidecar"]
        body = wait_for_sync(
            lambda: (lambda r: r[1] if b"dynamo_sidecar_dynamo_request_rate" in r[1] else None)(
                http_get(base + "/metrics")
            ),
            timeout=30,
            what="demo metrics",
        )
        for needle in (
            b"dynamo_sidecar_process_resident_memory_bytes",
            b'dynamo_sidecar_collector_success{collector="dynamo_health"} 1.0',
            b'dynamo_sidecar_endpoint_up{endpoint="frontend",probe="health"} 1.0',
        ):
            assert needle in body
        http_post(urls["control"] + "/frontend/stop")

        def refused() -> dict[str, Any] | None:
            status, raw = http_get(base + "/diagnose")
            report = json.loads(raw) if status == 200 else {}
            return (
                report
                if any(f["id"] == "endpoint_refused:frontend" for f in report.get("findings", []))
                else None
            )

        report = wait_for_sync(refused, timeout=15, what="frontend refused finding")
        assert report["status"] == "critical"
        assert http_get(base + "/metrics")[0] == 200  # still serving
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "demo stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_alerts_command_applies_threshold_overrides() -> None:
    import os

    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "alerts"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DYN_SIDECAR_THRESHOLDS": "worker_restarted.restarts=2"},
    )
    assert result.returncode == 0, result.stderr
    assert "[15m]) >= 2" in result.stdout and "alert: DynamoWorkerRestarting" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "agent.cli", "alerts"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DYN_SIDECAR_THRESHOLDS": "nope.x=1"},
    )
    assert bad.returncode == 64 and "not a known threshold" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "command",
    ["run", "demo", "check-config", "canary", "alerts", "diagnose", "inject", "webhook", "verify", "audit"],
)
def test_every_help_prints(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**ENV, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def _one_clear_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 64, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and len(lines[0]) < 400, result.stderr[:2000]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("listen_port: 1\n".encode("utf-16"), ("UTF-16",)),
        (b"x: \xc3\x28\n", ("UTF-8",)),
        (b'a: &a ["x","x"]\nb: &b [*a,*a]\nc: [*b,*b]\n', ("aliases",)),
        (b"dynamo_interval: 1\ndynamo_interval: 2\n", ("duplicate key",)),
        (b"listen_port: " + b"9" * 5000 + b"\n", ("valid YAML",)),
        (b"dynamo_intervall: 3\n", ("did you mean dynamo_interval",)),
        (b"# " + b"x" * (2 << 20) + b"\n", ("at most",)),
    ],
    ids=["utf16", "bad-utf8", "alias-bomb", "duplicate-key", "huge-integer", "unknown-key", "too-large"],
)
def test_bad_config_files_are_one_clear_line(tmp_path, content: bytes, words: tuple[str, ...]) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    _one_clear_line(_cli("check-config", "--config", str(path)), *words)


def test_a_fifo_as_config_does_not_hang(tmp_path) -> None:
    import os

    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    _one_clear_line(_cli("check-config", "--config", str(fifo), timeout=20), "regular")


def test_cli_usage_errors_are_one_clear_line() -> None:
    _one_clear_line(_cli("demo", "--fault", "worker_slow=abc", "--duration", "1"), "worker_slow")
    _one_clear_line(_cli("diagnose", "--since", "bad"), "--since")
    _one_clear_line(_cli("diagnose", "--since", "9" * 400), "--since")


def test_unknown_env_variable_warns_with_the_nearest_key() -> None:
    result = _cli("check-config", env={"DYN_SIDECAR_DYNAMO_INTERVALL": "3"})
    assert result.returncode == 0
    assert "DYN_SIDECAR_DYNAMO_INTERVALL is not a config variable" in result.stderr
    assert "did you mean DYN_SIDECAR_DYNAMO_INTERVAL" in result.stderr


def test_port_and_listen_port_name_the_same_thing() -> None:
    result = _cli("check-config", "--port", "9555")
    assert result.returncode == 0 and json.loads(result.stdout)["listen_port"] == 9555
    demo = _cli("demo", "--help")
    assert "--listen-port" in demo.stdout and "--concurrency" in demo.stdout
