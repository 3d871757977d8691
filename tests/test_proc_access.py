"""The sidecar reads a Dynamo process's fd limit (prlimit), its fd links (/proc/<pid>/fd/N: which
sockets it holds) and its environ only when its uid AND its gid match the process's (Linux's
ptrace access check, PTRACE_MODE_READ_FSCREDS, and prlimit's own). Dynamo's images run as uid
1000, gid 0: a sidecar with gid 1000 sees no fd limit and no sockets of Dynamo, so
`fd_exhaustion` can never fire.

Shown with the real process collector, run as each identity against a process running as
Dynamo's (root starts both, as the container runtime would); then the identity `inject` writes
and the image's USER are shown to be the working one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from agent.tools.inject import Options, inject
from tests.helpers import ROOT

DYNAMO = (1000, 0)  # uid, gid of Dynamo's container user
FD_LIMIT = 777
TARGET = f"""
import resource, socket, time
resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, {FD_LIMIT}))
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
print(listener.getsockname()[1], flush=True)
time.sleep(120)
"""
READER = """
import json, sys, time
from collectors.process import Found, _read_process
fact, _, _ = _read_process(Found(int(sys.argv[1]), "frontend", "python3 -m dynamo.frontend"), time.time())
print(json.dumps({"open_fds": fact.open_fds, "max_fds": fact.max_fds, "listen_ports": fact.listen_ports}))
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting processes as other users needs root")


@dataclass
class Python:
    """An interpreter uid 1000 may run, and the environment that lets it import the collector."""

    path: str
    env: dict[str, str]

    def start(self, uid: int, gid: int, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [self.path, *args],
            user=uid,
            group=gid,
            extra_groups=[],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def _python() -> Python:
    """This interpreter when others may run it, else the system's python3 of the same version
    with this venv's packages on the path (a venv under /root is closed to uid 1000)."""
    site = str(Path(psutil.__file__).resolve().parents[1])
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}{os.pathsep}{site}", "PYTHONDONTWRITEBYTECODE": "1"}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}"):
        python = Python(candidate, env)
        try:
            probe = python.start(*DYNAMO, "-c", "import collectors.process")
        except OSError:
            continue
        probe.communicate(timeout=60)
        if probe.returncode == 0:
            return python
    pytest.skip(
        f"no Python that uid {DYNAMO[0]} may run imports the collector (is the clone readable to others?)"
    )


@pytest.fixture(scope="module")
def python() -> Python:
    return _python()


@pytest.fixture(scope="module")
def dynamo_process(python: Python) -> Iterator[tuple[int, int]]:
    """(pid, listening port) of a process running as Dynamo's user and group."""
    proc = python.start(*DYNAMO, "-c", TARGET)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield proc.pid, port
    proc.kill()
    proc.communicate(timeout=10)


def read_as(python: Python, uid: int, gid: int, pid: int) -> dict[str, object]:
    out, err = (reader := python.start(uid, gid, "-c", READER, str(pid))).communicate(timeout=60)
    assert reader.returncode == 0, err[-2000:]
    return dict(json.loads(out))


def test_the_group_decides_what_the_sidecar_can_read(python: Python, dynamo_process: tuple[int, int]) -> None:
    pid, port = dynamo_process
    # The image's old identity: uid 1000 but gid 1000. The fd directory is the user's own, so
    # the count shows; the limit (prlimit) and the fd links (the sockets) need the gid too.
    other_group = read_as(python, 1000, 1000, pid)
    assert other_group["max_fds"] is None and other_group["listen_ports"] == []
    # Dynamo's own uid and gid: everything fd_exhaustion and the socket checks need.
    seen = read_as(python, *DYNAMO, pid)
    assert seen["max_fds"] == FD_LIMIT and seen["listen_ports"] == [port]
    assert isinstance(seen["open_fds"], int) and seen["open_fds"] >= 4  # stdio and the listener


def test_the_injected_sidecar_and_the_image_run_as_the_identity_that_reads(
    python: Python,
    dynamo_process: tuple[int, int],
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "fe", "labels": {"nvidia.com/dynamo-component-type": "frontend"}},
        "spec": {"containers": [{"name": "main", "image": "nvcr.io/nvidia/ai-dynamo/vllm-runtime:0.6.1"}]},
    }
    injected, _ = inject(pod, Options(image="registry.test/dynamo-sidecar:0.1.0"))
    context = injected["spec"]["initContainers"][0]["securityContext"]
    assert context["runAsNonRoot"] is True
    identity = (context["runAsUser"], context["runAsGroup"])
    assert identity == DYNAMO
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None and (int(user[1]), int(user[2])) == identity
    pid, port = dynamo_process
    assert read_as(python, *identity, pid)["listen_ports"] == [port]
