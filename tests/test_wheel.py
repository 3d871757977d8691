"""What a user installs is what is tested. The sdist and the wheel are built as a release builds
them (`python -m build`: the sdist first, the wheel from the unpacked sdist), the wheel is
installed non-editable into a fresh venv with its real dependencies, and every subcommand runs
from a directory outside the clone, where nothing of the source tree can be imported.

Built and installed once per session. The dependencies come from a wheelhouse kept in
~/.cache/dynamo-sidecar/wheelhouse (filled by `pip download` the first time, or whenever the
wheel asks for something it lacks), so a run costs a build and an offline install."""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent import __version__
from agent.cli import build_parser
from tests.helpers import ROOT, free_port, wait_for_sync
from tests.procs import ENV, http_get

pytestmark = pytest.mark.slow

PACKAGES = ("agent", "collectors", "exporters")
# What a clone holds that a build must not see (made by tests, venvs, caches).
NOT_SOURCE = {".git", ".venv", ".dynamo-venv", "build", "dist", "__pycache__", ".pytest_cache",
              ".ruff_cache", ".mypy_cache", ".dynamo-kv", "tiny-model"}  # fmt: skip
WHEELHOUSE = Path.home() / ".cache" / "dynamo-sidecar" / "wheelhouse"
AUDIT = ROOT / "tests" / "fixtures" / "audit"
IMAGE = "registry.test/dynamo-sidecar:0.1.0"


@dataclass
class Installed:
    wheel: Path
    sdist: Path
    venv: Path
    workdir: Path  # outside the clone
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def cli(self) -> str:
        return str(self.venv / "bin" / "dynamo-sidecar")

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.cli, *args],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
            env=user_env(),
        )


def user_env() -> dict[str, str]:
    """A user's shell: no Dynamo or sidecar settings, nothing pointing into the clone."""
    return {k: v for k, v in ENV.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}


def source_files(package: str) -> set[str]:
    """Every file a package ships, relative to the clone: its modules and its data."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def _copy_ignore(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in NOT_SOURCE or n.endswith((".egg-info", ".pyc"))}


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )


def _install(wheel: Path, python: Path) -> None:
    """The wheel and its declared dependencies into `python`'s venv: offline from the
    wheelhouse, after one `pip download` when the wheelhouse lacks something."""
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    # --no-compile: the venv is writable, so Python compiles on first import instead (seconds saved).
    install = [
        "--python",
        str(python),
        "install",
        "--no-compile",
        "--no-index",
        "--find-links",
        str(WHEELHOUSE),
        str(wheel),
    ]
    with open(WHEELHOUSE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worktree's suite may be filling it
        if _pip(*install).returncode == 0:
            return
        download = _pip("download", "--quiet", "--dest", str(WHEELHOUSE), str(wheel))
        # pip download copies the wheel itself too: only dependencies stay in the wheelhouse.
        for stale in WHEELHOUSE.glob("dynamo_sidecar-*"):
            stale.unlink()
        if download.returncode != 0:
            pytest.skip(f"the wheel's dependencies cannot be downloaded here: {download.stderr[-300:]}")
    installed = _pip(*install)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    pytest.importorskip("build", reason="the `build` package is not installed (it is in the [test] extra)")
    base = tmp_path_factory.mktemp("wheel")
    seconds: dict[str, float] = {}
    start = time.monotonic()
    source = base / "clone"
    shutil.copytree(ROOT, source, ignore=_copy_ignore, symlinks=True)
    dist = base / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    seconds["build"] = time.monotonic() - start
    start = time.monotonic()
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    _install(wheel, venv / "bin" / "python")
    seconds["install"] = time.monotonic() - start
    # Shown with -s; the suite's budget is in docs/development.md.
    print(f"\nwheel: build {seconds['build']:.1f}s, venv and install {seconds['install']:.1f}s")
    workdir = base / "elsewhere"
    workdir.mkdir()
    return Installed(wheel, sdist, venv, workdir, seconds)


def test_the_wheel_and_the_sdist_hold_every_module_and_the_license(installed: Installed) -> None:
    expected = set().union(*(source_files(p) for p in PACKAGES))
    assert "agent/tools/audit/checks.py" in expected and "agent/tools/verify/drill.py" in expected
    assert any(name.startswith("agent/dynamo_sim/recorded/") for name in expected)
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        dist_info = f"dynamo_sidecar-{__version__}.dist-info"
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
    assert expected - names == set(), "left out of the wheel"
    assert f"{dist_info}/licenses/LICENSE" in names
    assert f"\nVersion: {__version__}\n" in metadata and "\nLicense-Expression: Apache-2.0\n" in metadata
    with tarfile.open(installed.sdist) as sdist:
        prefix = f"dynamo_sidecar-{__version__}/"
        in_sdist = {name.removeprefix(prefix) for name in sdist.getnames()}
    assert expected - in_sdist == set(), "left out of the sdist"
    assert {"LICENSE", "README.md", "pyproject.toml"} <= in_sdist


def test_the_installed_package_is_the_wheel_not_the_clone(installed: Installed) -> None:
    probe = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c",
         "import agent, importlib.metadata as m; print(agent.__file__); print(m.version('dynamo-sidecar'))"],
        capture_output=True, text=True, timeout=60, cwd=installed.workdir, env=user_env(),
    )  # fmt: skip
    location, version = probe.stdout.split()
    assert location.startswith(str(installed.venv / "lib")), location
    assert version == __version__
    assert installed.run("--version").stdout.strip() == f"dynamo-sidecar {__version__}"


def subcommands() -> list[str]:
    """Every subcommand the parser knows, so a new one is covered without editing this test."""
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def test_every_subcommand_has_help(installed: Installed) -> None:
    names = subcommands()
    assert {"run", "demo", "audit", "verify", "inject", "webhook", "diagnose"} <= set(names)
    procs = {
        name: subprocess.Popen(
            [installed.cli, name, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=installed.workdir,
            env=user_env(),
        )
        for name in names
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and err == "", (name, err)
        assert out.startswith(f"usage: dynamo-sidecar {name}"), (name, out[:200])


def test_audit_and_inject_on_fixtures(installed: Installed) -> None:
    audit = installed.run("audit", "-f", str(AUDIT / "dgd_defaults.yaml"))
    assert audit.returncode == 2, audit.stderr
    assert audit.stdout.startswith("dynamo-sidecar audit (manifest): CRITICAL") and audit.stderr == ""
    injected = installed.run("inject", "-f", str(AUDIT / "dgd_hardened.yaml"), "--image", IMAGE)
    assert injected.returncode == 0, injected.stderr
    assert f"image: {IMAGE}" in injected.stdout
    # The hardened graph with the sidecar added: nothing left at warning or above.
    again = installed.run("audit", "-f", "-", "--format", "json", stdin=injected.stdout)
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "ok", again.stdout[-2000:]
    # No image configured: one line saying how to give one, nothing written.
    bare = installed.run("inject", "-f", str(AUDIT / "dgd_hardened.yaml"))
    assert bare.returncode == 64 and bare.stdout == ""
    assert (
        len(bare.stderr.splitlines()) == 1 and "--image" in bare.stderr and "DYN_SIDECAR_IMAGE" in bare.stderr
    )


def test_alerts_and_check_config(installed: Installed) -> None:
    alerts = installed.run("alerts")
    assert alerts.returncode == 0 and "alert: DynamoWorkerRestarting" in alerts.stdout, alerts.stderr
    config = installed.run("check-config", "--listen-port", "9555")
    assert config.returncode == 0 and json.loads(config.stdout)["listen_port"] == 9555, config.stderr


def test_verify_against_an_unreachable_frontend_is_one_line_and_exit_3(installed: Installed) -> None:
    result = installed.run("verify", "--frontend-url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 3 and result.stdout == "", result.stderr
    assert len(result.stderr.splitlines()) == 1 and "cannot reach" in result.stderr


def test_demo_serves_and_stops_on_ctrl_c(installed: Installed) -> None:
    proc = subprocess.Popen(
        [installed.cli, "demo", "--port", "0", "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=installed.workdir, env=user_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        urls = json.loads(proc.stdout.readline())
        wait_for_sync(
            lambda: (
                b'dynamo_sidecar_endpoint_up{endpoint="frontend",probe="health"} 1.0'
                in http_get(urls["sidecar"] + "/metrics")[1]
                or None
            ),
            timeout=30,
            what="the installed demo's frontend seen up",
        )
        proc.send_signal(signal.SIGINT)
        # Not communicate(): it reads the pipe's fd directly and would miss what readline()
        # above already buffered (the banner arrives with the JSON line). The output is a few
        # KB, far below a pipe's capacity, so waiting first cannot block the demo.
        proc.wait(timeout=30)
        assert proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
        assert proc.returncode == 0, err[-2000:]
        assert "demo stopped" in out and "Traceback" not in err
        # The drill the demo offers is this installation's own binary.
        assert f"{installed.cli} verify --frontend-url {urls['frontend']}" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
