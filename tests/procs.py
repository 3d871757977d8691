"""Helpers for tests (and benches) that drive real processes: the simulated Dynamo and the
sidecar as subprocesses, and blocking HTTP calls to them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

from tests.helpers import free_port, wait_for_sync

PYTHON = sys.executable
# The tests' own environment must not leak Dynamo settings into the processes they start.
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DYN_")}


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def http_post(url: str, body: dict[str, Any] | None = None) -> int:
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


def start_sim(*extra: str, control: bool = False) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """`python -m agent.dynamo_sim` on free ports; returns the process and its ports and pid."""
    ports = {"frontend": free_port(), "worker": free_port()}
    args = ["--frontend-port", str(ports["frontend"]), "--worker-port", str(ports["worker"])]
    if control:
        ports["control"] = free_port()
        args += ["--control-port", str(ports["control"])]
    proc = subprocess.Popen(
        [PYTHON, "-m", "agent.dynamo_sim", *args, *extra], stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert proc.stdout is not None
    ports["pid"] = json.loads(proc.stdout.readline())["pid"]
    return proc, ports


def spawn_sidecar(
    frontend_url: str,
    worker_url: str,
    *extra: str,
    pid: int = 0,
    interval: str = "0.3",
    env: dict[str, str] | None = None,
    stdout: int = subprocess.PIPE,
) -> tuple[subprocess.Popen[str], str]:
    """`dynamo-sidecar run` on a free port watching those URLs; waits until /readyz says ready."""
    port = free_port()
    args = [
        PYTHON,
        "-m",
        "agent.cli",
        "run",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--frontend-url",
        frontend_url,
        "--worker-system-urls",
        worker_url,
        "--dynamo-interval",
        interval,
        "--process-interval",
        interval,
        "--startup-grace",
        "0",
        "--log-format",
        "json",
        # The host's socket table is not the test's (pass --tcp-enabled true to override).
        "--tcp-enabled",
        "false",
    ]
    if pid:
        args += ["--process-pid", str(pid)]
    proc = subprocess.Popen([*args, *extra], stdout=stdout, stderr=subprocess.PIPE, text=True, env=env or ENV)
    url = f"http://127.0.0.1:{port}"
    wait_for_sync(lambda: http_get(url + "/readyz")[0] == 200, timeout=30, what="sidecar ready")
    return proc, url


def start_sidecar(
    ports: dict[str, int], *extra: str, interval: str = "0.3"
) -> tuple[subprocess.Popen[str], str]:
    """The sidecar watching a simulated Dynamo started by start_sim()."""
    return spawn_sidecar(
        f"http://127.0.0.1:{ports['frontend']}",
        f"http://127.0.0.1:{ports['worker']}",
        *extra,
        pid=ports["pid"],
        interval=interval,
    )


def log_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]
