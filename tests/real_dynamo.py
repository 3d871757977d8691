"""Runs a real Dynamo 1.6.1 frontend and mocker worker on loopback for integration tests.

The Dynamo venv is found at $DYNAMO_PYTHON, else ~/.cache/dynamo-sidecar/dynamo-1.6.1
(where .ci/run installs it once); tests using it are marked `dynamo` and skip with the reason
when it is missing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import wait_for_sync

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DEFAULT_VENV = Path.home() / ".cache" / "dynamo-sidecar" / "dynamo-1.6.1"


def free_i16_port() -> int:
    """A free loopback port below 32768: Dynamo 1.6.1 parses DYN_SYSTEM_PORT as an i16."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 32767)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768")


def dynamo_python() -> str | None:
    candidate = os.environ.get("DYNAMO_PYTHON") or str(DEFAULT_VENV / "bin" / "python")
    if not os.path.exists(candidate):
        return None
    probe = subprocess.run(
        [candidate, "-c", "import dynamo.frontend, dynamo.mocker"], capture_output=True, timeout=120
    )
    return candidate if probe.returncode == 0 else None


def unavailable_reason() -> str:
    return (
        "real Dynamo not installed: run .ci/run (installs ai-dynamo 1.6.1 into "
        f"{DEFAULT_VENV}) or set DYNAMO_PYTHON"
    )


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


class RealDynamo:
    """One frontend and one mocker worker sharing a fresh file-based discovery store."""

    def __init__(self, python: str, workdir: Path) -> None:
        self.python = python
        self.workdir = workdir
        self.model = workdir / "tiny-model"
        if not self.model.exists():
            subprocess.run(
                [python, str(FIXTURES / "make_tiny_model.py"), str(self.model)],
                check=True,
                capture_output=True,
                timeout=120,
            )
        self.frontend_port = free_i16_port()
        self.worker_port = free_i16_port()
        self.frontend: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None  # the last one started
        self.workers: list[subprocess.Popen[bytes]] = []  # every worker started, for stop()
        self.frontend_log = workdir / "frontend.log"
        self.worker_log = workdir / "worker.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DYN_")},
            "DYN_DISCOVERY_BACKEND": "file",
            "DYN_FILE_KV": str(workdir / "kv"),
            "DYN_REQUEST_PLANE": "tcp",
            "DYN_TCP_RPC_HOST": "127.0.0.1",
            "DYN_EVENT_PLANE_HOST": "127.0.0.1",
            "DYN_HTTP_HOST": "127.0.0.1",
            "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1",
            "DYN_SYSTEM_HOST": "127.0.0.1",
            "DYN_LOGGING_JSONL": "1",
            "HF_HUB_OFFLINE": "1",
        }

    @property
    def frontend_url(self) -> str:
        return f"http://127.0.0.1:{self.frontend_port}"

    @property
    def worker_url(self) -> str:
        return f"http://127.0.0.1:{self.worker_port}"

    def start_worker(
        self,
        health_check: bool = True,
        speedup: float = 10.0,
        extra_env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        env = {
            **self.env,
            "DYN_SYSTEM_ENABLED": "true",
            "DYN_SYSTEM_PORT": str(self.worker_port),
            **(extra_env or {}),
        }
        if health_check:
            env["DYN_HEALTH_CHECK_ENABLED"] = "true"
        log = self.worker_log.open("ab")
        self.worker = subprocess.Popen(
            [
                self.python,
                "-m",
                "dynamo.mocker",
                "--model-path",
                str(self.model),
                "--model-name",
                "tiny",
                "--speedup-ratio",
                str(speedup),
                *(extra_args or []),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        self.workers.append(self.worker)
        wait_for_sync(
            lambda: http_get(self.worker_url + "/live")[0] in {200, 503},
            timeout=60,
            what="worker system port",
        )

    def start_frontend(self, extra_env: dict[str, str] | None = None) -> None:
        log = self.frontend_log.open("ab")
        self.frontend = subprocess.Popen(
            [self.python, "-m", "dynamo.frontend", "--http-port", str(self.frontend_port)],
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        wait_for_sync(
            lambda: http_get(self.frontend_url + "/live")[0] == 200, timeout=60, what="frontend /live"
        )

    def wait_model(self, present: bool = True, timeout: float = 60, model: str = "tiny") -> None:
        def check() -> bool:
            status, body = http_get(self.frontend_url + "/v1/models")
            if status != 200:
                return False
            ids = [m["id"] for m in json.loads(body)["data"]]
            return (model in ids) == present

        wait_for_sync(check, timeout=timeout, what=f"model {model} {'listed' if present else 'gone'}")

    def completion(
        self, request_id: str, max_tokens: int = 4, stream: bool = False, timeout: float = 30
    ) -> tuple[int, bytes]:
        body = json.dumps(
            {"model": "tiny", "prompt": "hello", "max_tokens": max_tokens, "stream": stream}
        ).encode()
        request = urllib.request.Request(
            self.frontend_url + "/v1/completions",
            data=body,
            headers={"Content-Type": "application/json", "x-request-id": request_id},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def signal_worker(self, sig: signal.Signals) -> None:
        assert self.worker is not None
        self.worker.send_signal(sig)

    def stop(self) -> None:
        for proc in (self.frontend, *self.workers):
            if proc is None or proc.poll() is not None:
                continue
            try:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            except ProcessLookupError:
                pass
            proc.wait(timeout=20)
        time.sleep(0)


def worker_restart_script(dynamo: RealDynamo, directory: Path) -> tuple[Path, Path]:
    """A shell script that starts a fresh mocker exactly as the fixture did, in the background
    (a drill's recover command), and the file it writes the new worker's pid to."""
    import shlex

    assert dynamo.worker is not None
    env = {**dynamo.env, "DYN_SYSTEM_ENABLED": "true", "DYN_SYSTEM_PORT": str(dynamo.worker_port),
           "DYN_HEALTH_CHECK_ENABLED": "true"}  # fmt: skip
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k.isidentifier())
    command = shlex.join(str(arg) for arg in dynamo.worker.args)  # type: ignore[union-attr]
    script, pid_file = directory / "restart_worker.sh", directory / "worker.pid"
    script.write_text(
        f"#!/bin/sh\ncd {shlex.quote(str(dynamo.workdir))}\n{exports}"
        f"nohup {command} >> {shlex.quote(str(dynamo.worker_log))} 2>&1 &\necho $! > {shlex.quote(str(pid_file))}\n"
    )
    return script, pid_file


def own_processes(dynamo: RealDynamo) -> str:
    """Patterns that match this test's Dynamo processes only (the machine runs others)."""
    return ",".join(
        [
            rf"dynamo\.frontend --http-port {dynamo.frontend_port}\b",
            r"dynamo\.mocker --model-path " + re.escape(str(dynamo.model)),
        ]
    )


# What every test against the real Dynamo carries: marked, and skipped with the reason when
# no Dynamo 1.6.1 is installed.
REAL_DYNAMO_MARKS = [
    pytest.mark.dynamo,
    pytest.mark.slow,
    pytest.mark.skipif(dynamo_python() is None, reason=unavailable_reason()),
]


def etcd_binary() -> str | None:
    """etcd from Debian's etcd-server (.ci/run installs it), or any etcd on PATH."""
    import shutil

    return shutil.which("etcd")


ETCD_MISSING = "etcd not installed: apt-get install etcd-server (.ci/run does)"


class Etcd:
    """A single-member etcd on loopback (ports below 32768, as Dynamo's own), data in
    `workdir`. `quota_bytes` makes a backend small enough to fill (NOSPACE alarm)."""

    def __init__(self, workdir: Path, quota_bytes: int = 0) -> None:
        binary = etcd_binary()
        assert binary is not None, ETCD_MISSING
        self.client_port, self.peer_port = free_i16_port(), free_i16_port()
        self.workdir = workdir
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.args = [
            binary,
            "--name=e1",
            f"--data-dir={workdir / 'etcd-data'}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=e1={peer}",
            *([f"--quota-backend-bytes={quota_bytes}"] if quota_bytes else []),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        log = (self.workdir / "etcd.log").open("ab")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        wait_for_sync(lambda: http_get(self.url + "/health")[0] == 200, timeout=30, what="etcd /health 200")

    def fill(self) -> None:
        """Writes past the quota through etcd's v3 JSON gateway: a NOSPACE alarm is raised."""
        import base64

        value = base64.b64encode(b"x" * 60_000).decode()
        for index in range(3):
            body = json.dumps({"key": base64.b64encode(f"fill-{index}".encode()).decode(), "value": value})
            request = urllib.request.Request(self.url + "/v3/kv/put", data=body.encode())
            try:
                urllib.request.urlopen(request, timeout=5).read()
            except urllib.error.HTTPError:
                break  # 429 "database space exceeded": the alarm is on

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
