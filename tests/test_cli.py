"""The command line as an operator runs it: real subprocesses, real ports, real signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import free_port, wait_for_sync
from tests.procs import ENV, PYTHON, http_get, http_post, start_sidecar, start_sim


@pytest.fixture
def sim_process() -> Iterator[dict[str, int]]:
    proc, ports = start_sim(control=True)
    yield ports
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


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
        http_post(f"http://127.0.0.1:{sim_process['control']}/frontend/stop")

        def critical() -> subprocess.CompletedProcess[str] | None:
            run = subprocess.run(
                [PYTHON, "-m", "agent.cli", "diagnose", "--url", url],
                capture_output=True,
                text=True,
                env=ENV,
                timeout=30,
            )
            return run if run.returncode == 2 else None

        result = wait_for_sync(critical, timeout=15, what="diagnose exit 2")
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
    assert result.returncode == 1
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
    assert bad.returncode == 2 and "not a known threshold" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("command", ["run", "demo", "check-config", "canary", "alerts", "diagnose"])
def test_every_help_prints(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
