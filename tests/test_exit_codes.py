"""Every exit code of docs/cli.md, each through the real command line (a subprocess), and one
meaning each: a usage error is never 2 ("critical"), an unreachable target is never 64."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.core import exitcodes
from agent.tools.inject import Options, inject
from tests.helpers import ROOT, free_port
from tests.procs import ENV, PYTHON

AUDIT = ROOT / "tests" / "fixtures" / "audit"
DOCS = ROOT / "docs" / "cli.md"


def nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}"


# (what, argv, code, a word of its one stderr line or None when stderr is not one line).
# Elsewhere, each through the real CLI too: verify's 3 and 64 (test_verify), canary's 3
# (test_canary_otlp), diagnose's 0/1/2/3 from a running sidecar and its --since 64 (test_cli),
# inject's 64 without an image or with a bad quantity (test_inject), audit's 64 (test_audit).
HARDENED, DEFAULTS = str(AUDIT / "dgd_hardened.yaml"), str(AUDIT / "dgd_defaults.yaml")
TLS = ["--tls-cert-file", "/x", "--tls-key-file", "/x"]
CASES: list[tuple[str, list[str], int, str | None]] = [
    ("check-config passes", ["check-config"], exitcodes.OK, None),
    ("audit: nothing at warning+", ["audit", "-f", "INJECTED"], exitcodes.OK, None),
    ("audit: a warning", ["audit", "-f", HARDENED], exitcodes.WARNING, None),
    ("audit: a critical finding", ["audit", "-f", DEFAULTS], exitcodes.CRITICAL, None),
    ("diagnose: sidecar unreachable", ["diagnose", "--url", "NOWHERE"], exitcodes.UNKNOWN, "cannot read"),
    ("argparse: bad choice", ["diagnose", "--format", "xml"], exitcodes.USAGE, "invalid choice"),
    ("argparse: unknown subcommand", ["bogus"], exitcodes.USAGE, "invalid choice"),
    ("argparse: missing flag", ["verify"], exitcodes.USAGE, "--frontend-url"),
    ("argparse: unknown flag", ["alerts", "--bogus"], exitcodes.USAGE, "unrecognized arguments"),
    ("config value", ["check-config", "--listen-port", "http"], exitcodes.USAGE, "listen_port"),
    ("webhook without an image", ["webhook", *TLS], exitcodes.USAGE, "--image"),
    (
        "webhook: no TLS files",
        ["webhook", *TLS, "--image", "r.test/ds:1"],
        exitcodes.USAGE,
        "--tls-cert-file",
    ),
]


@pytest.mark.slow
def test_each_code_means_one_thing(tmp_path: Path) -> None:
    """All cases at once (each is a process start; they wait on different things)."""
    hardened = [d for d in yaml.safe_load_all((AUDIT / "dgd_hardened.yaml").read_text()) if d]
    injected = [inject(d, Options(image="registry.test/ds:0.1.0"))[0] for d in hardened]
    (tmp_path / "injected.yaml").write_text(yaml.safe_dump_all(injected))
    substitutes = {"NOWHERE": nowhere, "INJECTED": lambda: str(tmp_path / "injected.yaml")}
    running = []
    for what, argv, code, word in CASES:
        args = [substitutes[a]() if a in substitutes else a for a in argv]
        proc = subprocess.Popen(
            [PYTHON, "-m", "agent.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=ENV,
        )
        running.append((what, proc, code, word))
    wrong: list[tuple[Any, ...]] = []
    for what, proc, code, word in running:
        out, err = proc.communicate(timeout=120)
        lines = err.splitlines()
        if proc.returncode != code or "Traceback" in err:
            wrong.append((what, proc.returncode, code, out[-300:], err[-500:]))
        elif word is not None and (len(lines) != 1 or word not in lines[0]):
            wrong.append((what, "stderr", word, err[-500:]))
    assert wrong == []


def test_an_internal_error_is_one_line_and_70() -> None:
    """A bug anywhere under main(): one line naming it and where, never a traceback."""
    code = (
        "import sys, agent.cli as c\n"
        "def broken(args):\n"
        "    return {}['missing']\n"
        "c._cmd_alerts = broken\n"
        "sys.exit(c.main(['alerts']))\n"
    )
    result = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert result.returncode == exitcodes.INTERNAL
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "internal error: KeyError: 'missing'" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_ctrl_c_is_130() -> None:
    """Ctrl-C while diagnose waits on a sidecar that accepted the connection and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        proc = subprocess.Popen(
            [PYTHON, "-m", "agent.cli", "diagnose", "--url", f"http://127.0.0.1:{port}", "--timeout", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        silent.settimeout(30)
        connection, _ = silent.accept()  # diagnose is now inside its request
        with connection:
            connection.settimeout(30)
            assert connection.recv(1024).startswith(b"GET /diagnose")  # waiting for the answer now
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == exitcodes.INTERRUPTED, err
    assert "Traceback" not in err and out == ""


def test_docs_cli_md_lists_every_code() -> None:
    """docs/cli.md's table is the one users read: every constant, with its number."""
    table = DOCS.read_text()
    for name in ("OK", "WARNING", "CRITICAL", "UNKNOWN", "USAGE", "INTERNAL", "INTERRUPTED"):
        assert f"| {getattr(exitcodes, name)} |" in table, name
    # Each subcommand has its own line of codes.
    from tests.test_wheel import subcommands

    for name in subcommands():
        assert f"`{name}`" in table, name
    assert exitcodes.BY_STATUS == {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}


def test_a_reader_that_went_away_is_130_and_quiet() -> None:
    """`dynamo-sidecar alerts | head -1`: the reader is gone before the output is written."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader at all: the first write fails
    try:
        proc = subprocess.run(
            [PYTHON, "-m", "agent.cli", "alerts"], stdout=write_end, stderr=subprocess.PIPE, text=True,
            timeout=60, env=ENV,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode == exitcodes.INTERRUPTED and proc.stderr == ""


def test_a_webhook_port_in_use_is_one_line_and_64(tmp_path: Path) -> None:
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: cannot make a test certificate")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = subprocess.run(
            [PYTHON, "-m", "agent.cli", "webhook", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
             "--image", "registry.test/ds:0.1.0", "--listen-host", "127.0.0.1",
             "--listen-port", str(busy.getsockname()[1])],
            capture_output=True, text=True, timeout=60, env=ENV,
        )  # fmt: skip
    assert result.returncode == exitcodes.USAGE, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "cannot listen" in lines[0] and "Traceback" not in result.stderr
