"""No credential given to the sidecar, or found by it, appears in any output (issue 26 item 6).

The matrix: credentials in every place they can be given (frontend and worker URLs with a
password holding `@`, etcd endpoints with a password and a `?token=`, NATS, the OTLP endpoint
and its headers, the sidecar's own token, a secret environment variable, and the command line
of a watched Dynamo process that stops) x every output (every HTTP endpoint in every format,
the log on stdout and stderr, check-config, the diagnose CLI). The raw bytes of each output are
searched for each secret string.
"""

from __future__ import annotations

import html
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from agent.core import redact
from tests.helpers import free_port, wait_for_sync
from tests.procs import ENV, PYTHON, http_get, spawn_sidecar, start_sim

FRONT_PW = "Fr0ntP@ss-7731"  # holds '@': was half redacted (<redacted>@ss-7731@host)
WORKER_PW = "W0rkerPw-5512"
ETCD_PW = "EtcdP@ss-9083"
ETCD_TOKEN = "EtcdTok-4410"  # a ?token= query parameter
NATS_TOKEN = "NatsTok-2290"
OTLP_PW = "OtlpP@ss-6618"
OTLP_HEADER = "OtlpHdr-3345"
OTLP_KEY = "OtlpKey-8812"
AUTH_TOKEN = "AuthTok-1174"
HF_TOKEN = "HfTok-6021"
CMD_KEY = "CmdKey-4471"  # --api-key X
CMD_TOKEN = "CmdTok-9902"  # --token=X
CMD_ENV = "CmdEnv-5518"  # OPENAI_API_KEY=X as an argument
CMD_QUERY = "CmdQuery-7720"  # ?api_key=X in a URL argument
CMD_URL_PW = "CmdUrlPw-8830"  # http://user:X@host argument

GIVEN = [
    FRONT_PW,
    WORKER_PW,
    ETCD_PW,
    ETCD_TOKEN,
    NATS_TOKEN,
    OTLP_PW,
    OTLP_HEADER,
    OTLP_KEY,
    AUTH_TOKEN,
    HF_TOKEN,
]
FOUND = [CMD_KEY, CMD_TOKEN, CMD_ENV, CMD_QUERY, CMD_URL_PW]
# Parts of secrets too: a half-redacted '@' password leaves its second half.
FRAGMENTS = ["ss-7731", "ss-9083", "ss-6618"]


def _leaks(where: str, data: bytes | str) -> list[str]:
    raw = data.encode() if isinstance(data, str) else data
    return [f"{secret} in {where}" for secret in [*GIVEN, *FOUND, *FRAGMENTS] if secret.encode() in raw]


@pytest.fixture
def stopped_dynamo() -> Iterator[int]:
    """A 'Dynamo' process whose command line carries credentials, stopped (state T): the
    process_stalled finding quotes its command line."""
    proc = subprocess.Popen(
        [
            PYTHON,
            "-c",
            "import time; time.sleep(120)",
            "-m",
            "dynamo.vllm",
            "--api-key",
            CMD_KEY,
            f"--token={CMD_TOKEN}",
            f"OPENAI_API_KEY={CMD_ENV}",
            f"--kv-events-url=http://kv:1/ev?api_key={CMD_QUERY}&x=1",
            f"--store=http://admin:{CMD_URL_PW}@etcd:2379",
        ],
        env=ENV,
    )
    os.kill(proc.pid, signal.SIGSTOP)
    yield proc.pid
    os.kill(proc.pid, signal.SIGCONT)
    proc.kill()
    proc.wait()


def _secret_env(closed: int) -> dict[str, str]:
    return {
        **ENV,
        "ETCD_ENDPOINTS": f"http://root:{ETCD_PW}@127.0.0.1:{closed}/?token={ETCD_TOKEN}",
        "NATS_SERVER": f"nats://{NATS_TOKEN}@127.0.0.1:{closed}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{OTLP_HEADER},x-api-key={OTLP_KEY}",
        "DYN_SIDECAR_AUTH_TOKEN": AUTH_TOKEN,
        "HF_TOKEN": HF_TOKEN,
    }


def test_no_credential_in_any_endpoint_format_or_the_log(stopped_dynamo: int) -> None:
    sim, ports = start_sim()
    closed = free_port()  # the OTLP receiver is not there: export errors get logged
    env = _secret_env(closed)
    sidecar, url = spawn_sidecar(
        f"http://fuser:{FRONT_PW}@127.0.0.1:{ports['frontend']}",
        f"http://wuser:{WORKER_PW}@127.0.0.1:{ports['worker']}",
        "--otlp-endpoint",
        f"http://ouser:{OTLP_PW}@127.0.0.1:{closed}/v1/traces",
        "--tcp-enabled",
        "true",
        "--canary-wait",
        "0.5",
        "--log-level",
        "debug",
        pid=stopped_dynamo,
        env=env,
    )
    leaks: list[str] = []
    try:

        def stalled() -> dict[str, Any] | None:
            report = json.loads(http_get(url + "/diagnose")[1])
            return next((f for f in report["findings"] if f["rule"] == "process_stalled"), None)

        finding = wait_for_sync(stalled, timeout=20, what="the stopped process's finding")
        command_line = next(e["value"] for e in finding["evidence"] if e["signal"] == "command line")
        # Shown, with its credentials replaced (the flag, the assignment, the query, the URL).
        assert f"--api-key {redact.REDACTED}" in command_line
        assert f"--token={redact.REDACTED}" in command_line
        assert f"OPENAI_API_KEY={redact.REDACTED}" in command_line
        status = json.loads(http_get(url + "/status")[1])
        assert status["config"]["frontend_url"] == f"http://{redact.REDACTED}@127.0.0.1:{ports['frontend']}"
        assert status["config"]["tcp_probe_targets"][0] == (
            f"etcd=http://{redact.REDACTED}@127.0.0.1:{closed}/?token={redact.REDACTED}"
        )
        wait_for_sync(
            lambda: json.loads(http_get(url + "/canaryz")[1])["canary"]["rounds"] >= 1,
            timeout=15,
            what="a canary round",
        )
        paths = [
            "/",
            "/metrics",
            "/status",
            "/healthz",
            "/readyz",
            "/canaryz",
            "/diagnose",
            "/diagnose?format=text",
            "/diagnose?format=html",
            "/diagnose?severity=critical",
            "/diagnose/request/canary-x",
            "/history?name=dynamo_frontend_requests_total",
        ]
        for path in paths:
            code, body = http_get(url + path)
            assert code in {200, 404, 503}, (path, code)
            assert body, path
            leaks += _leaks(path, body)
        for fmt in ("text", "json"):
            cli = subprocess.run(
                [PYTHON, "-m", "agent.cli", "diagnose", "--url", url, "--format", fmt],
                capture_output=True,
                env=ENV,
                timeout=30,
            )
            assert b"process_stalled" in cli.stdout
            leaks += _leaks(f"diagnose --format {fmt}", cli.stdout + cli.stderr)
    finally:
        sidecar.send_signal(signal.SIGTERM)
        out, err = sidecar.communicate(timeout=30)
        sim.terminate()
        sim.wait(timeout=10)
    assert '"sidecar listening"' in out  # the log was read
    # The OTLP endpoint is logged, its credentials replaced.
    assert f'"endpoint":"http://{redact.REDACTED}@127.0.0.1:{closed}/v1/traces"' in out
    leaks += _leaks("the log (stdout)", out) + _leaks("stderr", err)
    assert leaks == []


def test_check_config_shows_no_credential() -> None:
    closed = free_port()
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "agent.cli",
            "check-config",
            "--frontend-url",
            f"http://fuser:{FRONT_PW}@127.0.0.1:8000",
            "--worker-system-urls",
            f"http://wuser:{WORKER_PW}@127.0.0.1:9090",
            "--otlp-endpoint",
            f"http://ouser:{OTLP_PW}@127.0.0.1:{closed}/v1/traces",
        ],
        capture_output=True,
        env=_secret_env(closed),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["tcp_probe_targets"] == [
        f"etcd=http://{redact.REDACTED}@127.0.0.1:{closed}/?token={redact.REDACTED}",
        f"nats=nats://{redact.REDACTED}@127.0.0.1:{closed}",
    ]
    assert config["auth_token"] == redact.REDACTED
    assert _leaks("check-config", result.stdout + result.stderr) == []


def test_a_config_error_does_not_repeat_the_credential() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "agent.cli", "check-config", "--frontend-url", f"ftp://fuser:{FRONT_PW}@host:21"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
    )
    assert result.returncode == 64
    assert "frontend_url" in result.stderr and redact.REDACTED in result.stderr
    assert _leaks("the error line", result.stderr) == []


def test_audit_does_not_repeat_a_manifests_tokens(tmp_path: Any) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        f"""apiVersion: v1
kind: Pod
metadata: {{name: w, labels: {{nvidia.com/dynamo-component-type: worker}}}}
spec:
  containers:
  - name: main
    image: x
    command: [python3, -m, dynamo.vllm, --api-key, {CMD_KEY}]
    env:
    - {{name: HF_TOKEN, value: {HF_TOKEN}}}
    - {{name: ETCD_ENDPOINTS, value: "http://root:{ETCD_PW}@etcd:2379"}}
"""
    )
    for fmt in ("text", "json", "html"):
        result = subprocess.run(
            [PYTHON, "-m", "agent.cli", "audit", "-f", str(manifest), "--format", fmt],
            capture_output=True,
            env=ENV,
            timeout=30,
        )
        assert result.returncode in {0, 1, 2}, result.stderr
        assert result.stdout
        assert _leaks(f"audit --format {fmt}", result.stdout + result.stderr) == []


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("http://u:P@ss5@host:1/x", f"http://{redact.REDACTED}@host:1/x"),
        ("a nats://tok3n@n:4222, b", f"a nats://{redact.REDACTED}@n:4222, b"),
        ("https://h/p?x=1&api_key=K&y=2", f"https://h/p?x=1&api_key={redact.REDACTED}&y=2"),
        ("https://h/p?sig=S&amp;token=T", f"https://h/p?sig={redact.REDACTED}&amp;token={redact.REDACTED}"),
        ("--api-key K --max-tokens 16", f"--api-key {redact.REDACTED} --max-tokens 16"),
        ("--password=P --no-auth --verbose", f"--password={redact.REDACTED} --no-auth --verbose"),
        ("HF_TOKEN=hf_x MAX_TOKENS=16", f"HF_TOKEN={redact.REDACTED} MAX_TOKENS=16"),
        ("X_REQUIRE_TOKEN=true", "X_REQUIRE_TOKEN=true"),
        ("Authorization: Bearer eyJ.abc", f"Authorization: Bearer {redact.REDACTED}"),
        ("{'client_secret': 'cs'}", f"{{'client_secret': {redact.REDACTED}}}"),
        ("cut at http://u:passwo", f"cut at http://{redact.REDACTED}"),
        ("at http://127.0.0.1:8000", "at http://127.0.0.1:8000"),
        ("at http://[::1]:8000", "at http://[::1]:8000"),
        ("http://[fe80::1%eth0]:9090/x?a=b", "http://[fe80::1%eth0]:9090/x?a=b"),
        ("first token after 2.5s; basic check", "first token after 2.5s; basic check"),
        ("allowed with the bearer token", "allowed with the bearer token"),
        ("authorization: Basic dXNlcjpwYXNz", f"authorization: Basic {redact.REDACTED}"),
        ("Bearer abcdefghijklmnopqrstuvwxyz", f"Bearer {redact.REDACTED}"),
    ],
)
def test_the_redactor_patterns(raw: str, shown: str) -> None:
    assert redact.text(raw) == shown


def test_structured_values_are_redacted_by_key() -> None:
    data = {"api_key": "k", "accessToken": "t", "max_tokens": 16, "auth_require_token": False, "url": "x"}
    assert redact.value(data) == {
        "api_key": redact.REDACTED,
        "accessToken": redact.REDACTED,
        "max_tokens": 16,
        "auth_require_token": False,
        "url": "x",
    }


async def test_verify_reports_and_errors_show_no_credential(tmp_path: Any) -> None:
    from tests.reliability.test_hostile_frontend import HostileFrontend, run_verify

    frontend = HostileFrontend()
    await frontend.start()
    try:
        with_password = f"http://fuser:{FRONT_PW}@127.0.0.1:{frontend.port}"
        for fmt in ("json", "text", "html"):
            output = tmp_path / f"report.{fmt}"
            code, err, _ = await run_verify(
                with_password,
                "--format",
                fmt,
                "--output",
                str(output),
                "--fault-cmd",
                f"true --api-key {CMD_KEY}",
            )
            assert code in {0, 1}, err
            shown = f"{redact.REDACTED}@127.0.0.1:{frontend.port}"
            assert (html.escape(shown) if fmt == "html" else shown) in output.read_text()
            assert _leaks(f"verify --format {fmt}", output.read_bytes() + err.encode()) == []
    finally:
        assert frontend.runner is not None
        await frontend.runner.cleanup()
    code, err, _ = await run_verify(f"http://fuser:{FRONT_PW}@127.0.0.1:{free_port()}")
    assert code == 3 and "cannot reach" in err
    assert _leaks("verify's error line", err) == []
