"""Process collector against real child processes; cgroup collector against fake v1 and v2
trees and against this machine's real cgroup and /proc/pressure."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from collectors.cgroup import CgroupCollector, parse_pressure, resolve
from collectors.process import ProcessCollector, ProcessFinder, process_label


def _cgroup_version(result: Any) -> str:
    """The version the cgroup collector found, as it exposes it (cgroup_info's label)."""
    (info,) = [s for s in result.samples if s.name == "dynamo_sidecar_cgroup_info"]
    return dict(info.labels)["version"]


def _values(result, name: str) -> dict[tuple, float]:
    return {s.labels: s.value for s in result.samples if s.name == "dynamo_sidecar_" + name}


@pytest.fixture
def fake_dynamo(tmp_path: Path):
    """A real process whose command line looks like a Dynamo frontend, with a child and fds."""
    pkg = tmp_path / "dynamo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "frontend.py").write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "files = [open(__file__) for _ in range(20)]\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynamo.frontend", "--http-port", "8000"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    for child in __import__("psutil").Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.wait(timeout=10)


async def test_discovers_dynamo_by_cmdline_and_reports_per_process(fake_dynamo) -> None:
    from agent.config import DEFAULT_PROCESS_PATTERNS

    collector = ProcessCollector(ProcessFinder(DEFAULT_PROCESS_PATTERNS), 1, 5)
    result = await collector.collect()
    labels = (("pid", str(fake_dynamo.pid)), ("process", "dynamo.frontend"))
    assert _values(result, "processes_matched")[()] >= 1
    assert _values(result, "process_threads")[labels] >= 1
    assert _values(result, "process_open_fds")[labels] >= 20
    assert _values(result, "process_max_fds")[labels] > _values(result, "process_open_fds")[labels]
    assert _values(result, "process_children")[labels] == 1
    assert _values(result, "process_resident_memory_bytes")[labels] > 1_000_000
    assert 0 <= _values(result, "process_uptime_seconds")[labels] < 120
    # The fake frontend's own CPU time by mode, as the kernel counts it (it sleeps: it barely moves).
    cpu = {
        dict(k)["mode"]: v
        for k, v in _values(result, "process_cpu_seconds_total").items()
        if dict(k)["pid"] == str(fake_dynamo.pid)
    }
    times = __import__("psutil").Process(fake_dynamo.pid).cpu_times()
    assert set(cpu) == {"user", "system"}
    assert cpu["user"] == pytest.approx(times.user, abs=0.05)
    assert cpu["system"] == pytest.approx(times.system, abs=0.05)
    switches = _values(result, "process_context_switches_total")
    assert {dict(k)["kind"] for k in switches if dict(k)["pid"] == str(fake_dynamo.pid)} == {
        "voluntary",
        "involuntary",
    }


async def test_pid_file_and_vanished_process(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file = tmp_path / "dynamo.pid"
        pid_file.write_text(f"{proc.pid}\n")
        collector = ProcessCollector(ProcessFinder([], pid_file=str(pid_file)), 1, 5)
        result = await collector.collect()
        assert _values(result, "processes_matched")[()] == 1
    finally:
        proc.kill()
        proc.wait()
    result = await collector.collect()  # the pid is gone: zero processes, not an error
    assert _values(result, "processes_matched")[()] == 0
    pid_file.write_text("garbage")
    result = await collector.collect()
    assert _values(result, "processes_matched")[()] == 0
    assert "pid file" in result.facts.discovery_error


def test_finder_sees_a_shell_exec_into_dynamo_and_rereads_only_what_it_must(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that was not Dynamo when first seen (a shell about to exec) is found once
    it execs; a process that stayed unmatched past YOUNG is not read again each scan."""
    import collectors.process as process_module

    marker = f"dynamo-finder-test-{os.getpid()}"
    go = tmp_path / "go"
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; exec {sys.executable} -c 'import time; time.sleep(60)' \"$M\""
    shell = subprocess.Popen(["sh", "-c", script], env={**os.environ, "M": marker})  # not in its own cmdline
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "bystander"])
    reads: list[str] = []
    real_read = process_module.read_cmdline

    def counting(path: str) -> list[str] | None:
        reads.append(path)
        return real_read(path)

    monkeypatch.setattr(process_module, "read_cmdline", counting)
    try:
        finder = ProcessFinder([marker + "$"])
        assert [f.pid for f in finder.find() if f.pid == shell.pid] == []  # still the shell
        go.write_text("")

        def exec_done() -> bool:
            return (Path(f"/proc/{shell.pid}/cmdline").read_bytes()).endswith(marker.encode() + b"\0")

        deadline = time.monotonic() + 10
        while not exec_done():
            assert time.monotonic() < deadline, "the shell never exec'd"
            time.sleep(0.02)
        found = [f for f in finder.find() if f.pid == shell.pid]
        assert len(found) == 1 and found[0].cmdline.endswith(marker)
        # Past YOUNG, an unmatched process is listed but its command line is not read again.
        monkeypatch.setattr(process_module, "YOUNG", 0.0)
        reads.clear()
        finder.find()
        bystander_path = f"/proc/{bystander.pid}/cmdline"
        assert bystander_path not in reads
        assert f"/proc/{shell.pid}/cmdline" in reads  # a match is re-read: it may exec away
        monkeypatch.setattr(process_module, "RECHECK_EVERY", 0.0)
        reads.clear()
        finder.find()
        assert bystander_path in reads
    finally:
        for proc in (shell, bystander):
            proc.kill()
            proc.wait(timeout=10)
    assert [f for f in finder.find() if f.pid == shell.pid] == []  # gone, and forgotten


def test_read_cmdline_splits_as_psutil_does(tmp_path: Path) -> None:
    from collectors.process import read_cmdline

    cases = {
        b"python3\0-m\0dynamo.frontend\0": ["python3", "-m", "dynamo.frontend"],
        b"dynamo worker: serving model\0": ["dynamo", "worker:", "serving", "model"],  # setproctitle
        b"nginx: master process": ["nginx:", "master", "process"],
        b"": [],
        b"bad\xffbyte\0": ["bad\ufffdbyte"],
    }
    for raw, expected in cases.items():
        path = tmp_path / "cmdline"
        path.write_bytes(raw)
        assert read_cmdline(str(path)) == expected, raw
    assert read_cmdline(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("table", ["netlink", "procfs"])
async def test_listening_ports_and_close_wait_of_a_process(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that listens on a port and holds a connection its peer closed: the collector
    reports that port and one CLOSE_WAIT socket (its own fds matched against the table read
    over netlink, or /proc/net/tcp where netlink is refused)."""
    import socket

    import collectors.sockets

    if table == "procfs":

        def refused() -> socket.socket:
            raise collectors.sockets.NetlinkUnavailable("refused for the test")

        monkeypatch.setattr(collectors.sockets, "_open", refused)

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    script = (
        "import socket, sys, time\n"
        "listener = socket.socket(); listener.bind(('127.0.0.1', 0)); listener.listen()\n"
        "peer = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
        "print(listener.getsockname()[1], flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(server.getsockname()[1])], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        accepted, _ = server.accept()
        accepted.close()  # the child's end goes to CLOSE_WAIT: it never closes it
        collector = ProcessCollector(ProcessFinder([], pid=child.pid), 1, 5)
        deadline = time.monotonic() + 10
        while True:
            collector._slow.clear()  # the socket readings are slow ones: read them every time
            fact = (await collector.collect()).facts.processes[0]
            if fact.close_wait == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert fact.listen_ports == [port]
        assert fact.close_wait == 1
    finally:
        child.kill()
        child.wait(timeout=10)
        server.close()


def test_process_label() -> None:
    assert process_label(["python3", "-m", "dynamo.mocker", "--model-path", "x"]) == "dynamo.mocker"
    assert process_label(["/usr/bin/dynamo-run"]) == "dynamo-run"
    assert process_label([]) == "unknown"


PSI = (
    "some avg10=1.50 avg60=2.00 avg300=0.50 total=123456\nfull avg10=0.25 avg60=0.10 avg300=0.00 total=789\n"
)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _fake_proc(tmp_path: Path, cgroup_text: str) -> Path:
    proc_root = tmp_path / "proc"
    _write(proc_root, "self/cgroup", cgroup_text)
    _write(proc_root, "pressure/cpu", PSI)
    _write(proc_root, "pressure/memory", PSI)
    return proc_root


def _no_process_finder() -> ProcessFinder:
    return ProcessFinder([r"^no-such-process-pattern$"])


async def test_cgroup_v2_tree(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    cg = "kubepods/pod1/ctr1"
    _write(root, "cgroup.controllers", "cpu memory io\n")
    _write(root, f"{cg}/memory.current", "1048576\n")
    _write(root, f"{cg}/memory.max", "4194304\n")
    _write(root, f"{cg}/memory.events", "low 0\nhigh 2\nmax 5\noom 1\noom_kill 1\n")
    _write(
        root,
        f"{cg}/cpu.stat",
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 100\nnr_throttled 25\nthrottled_usec 1500000\n",
    )
    _write(root, f"{cg}/cpu.max", "200000 100000\n")
    _write(root, f"{cg}/memory.pressure", PSI)
    proc_root = _fake_proc(tmp_path, f"0::/{cg}\n")
    result = await CgroupCollector(_no_process_finder(), str(root), str(proc_root), 1, 5).collect()
    get = lambda name, **labels: next(
        s.value
        for s in result.samples
        if s.name == "dynamo_sidecar_" + name and set(labels.items()) <= set(s.labels)
    )
    assert get("cgroup_info", version="v2", scope="self") == 1
    assert get("cgroup_memory_usage_bytes") == 1048576
    assert get("cgroup_memory_limit_bytes") == 4194304
    assert get("cgroup_memory_events_total", event="oom_kill") == 1
    assert get("cgroup_memory_events_total", event="max") == 5
    assert get("cgroup_cpu_usage_seconds_total") == 2.5
    assert get("cgroup_cpu_throttled_periods_total") == 25
    assert get("cgroup_cpu_throttled_seconds_total") == 1.5
    assert get("cgroup_cpu_limit_cores") == 2.0
    assert get(
        "pressure_stall_ratio", scope="cgroup", resource="memory", kind="some", window="10s"
    ) == pytest.approx(0.015)
    assert get(
        "pressure_stall_ratio", scope="host", resource="cpu", kind="full", window="10s"
    ) == pytest.approx(0.0025)
    assert get("pressure_stalled_seconds_total", scope="host", resource="cpu", kind="some") == pytest.approx(
        0.123456
    )


async def test_cgroup_v1_hybrid_tree_and_unlimited(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    cg = "docker/abc"
    _write(root, f"memory/{cg}/memory.usage_in_bytes", "2097152\n")
    _write(root, f"memory/{cg}/memory.limit_in_bytes", "9223372036854771712\n")
    _write(root, f"memory/{cg}/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    _write(root, f"memory/{cg}/memory.failcnt", "7\n")
    _write(root, "cpu/cpu.stat", "nr_periods 50\nnr_throttled 10\nthrottled_time 2000000000\n")
    _write(root, "cpu/cpu.cfs_quota_us", "50000\n")
    _write(root, "cpu/cpu.cfs_period_us", "100000\n")
    _write(root, "cpuacct/cpuacct.usage", "3000000000\n")
    _write(root, "unified/cpu.pressure", PSI)
    proc_root = _fake_proc(tmp_path, f"4:memory:/{cg}\n2:cpu,cpuacct:/\n1:name=systemd:/\n0::/\n")
    result = await CgroupCollector(_no_process_finder(), str(root), str(proc_root), 1, 5).collect()
    names = {s.name: s for s in result.samples}
    assert _cgroup_version(result) == "v1" and result.facts is None
    assert names["dynamo_sidecar_cgroup_memory_usage_bytes"].value == 2097152
    assert "dynamo_sidecar_cgroup_memory_limit_bytes" not in names  # unlimited
    events = {
        dict(s.labels)["event"]: s.value for s in result.samples if s.name.endswith("memory_events_total")
    }
    assert events == {"oom_kill": 3, "max": 7}
    assert names["dynamo_sidecar_cgroup_cpu_limit_cores"].value == 0.5
    assert names["dynamo_sidecar_cgroup_cpu_throttled_seconds_total"].value == 2.0
    assert names["dynamo_sidecar_cgroup_cpu_usage_seconds_total"].value == 3.0
    assert any(
        s.name.endswith("pressure_stall_ratio") and dict(s.labels)["scope"] == "cgroup"
        for s in result.samples
    )


async def test_missing_files_are_not_errors(tmp_path: Path) -> None:
    result = await CgroupCollector(
        _no_process_finder(), str(tmp_path / "nothing"), str(tmp_path / "noproc"), 1, 5
    ).collect()
    assert _cgroup_version(result) == "none"
    assert [s.name for s in result.samples] == ["dynamo_sidecar_cgroup_info"]


async def test_real_machine_cgroup_and_pressure() -> None:
    result = await CgroupCollector(_no_process_finder(), "/sys/fs/cgroup", "/proc", 1, 5).collect()
    names = {s.name for s in result.samples}
    assert _cgroup_version(result) in {"v1", "v2"}
    assert "dynamo_sidecar_cgroup_memory_usage_bytes" in names
    if os.path.exists("/proc/pressure/cpu"):
        assert any(
            s.name == "dynamo_sidecar_pressure_stall_ratio" and dict(s.labels)["scope"] == "host"
            for s in result.samples
        )


def test_resolve_prefers_the_process_cgroup_dir(tmp_path: Path) -> None:
    (tmp_path / "memory" / "a" / "b").mkdir(parents=True)
    paths = resolve(str(tmp_path), "4:memory:/a/b\n", "dynamo")
    assert paths.memory.endswith("memory/a/b")
    # A path the mount does not have (own cgroup namespace): the mount root is the cgroup.
    paths = resolve(str(tmp_path), "4:memory:/elsewhere\n", "dynamo")
    assert paths.memory == str(tmp_path / "memory")


def test_parse_pressure_tolerates_garbage() -> None:
    assert parse_pressure("some avg10=x total=5\nbogus\n") == {"some": {"total": 5.0}}
    _ = time


def test_cgroup_collector_reuses_this_cycles_discovery(tmp_path: Path) -> None:
    """The cgroup collector takes the process collector's discovery from the same cycle
    instead of scanning /proc again, and looks again itself once that process is gone."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        finder = ProcessFinder([], pid=proc.pid)
        assert [f.pid for f in finder.find()] == [proc.pid]
        scans: list[int] = []
        real_find = finder._find

        def counted_find() -> list[Any]:
            scans.append(1)
            return real_find()

        finder._find = counted_find  # type: ignore[method-assign]
        collector = CgroupCollector(finder, "/sys/fs/cgroup", "/proc", 5, 5)
        assert collector._paths().scope == "dynamo"
        assert scans == []  # the discovery above was reused
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert collector._paths().scope == "self"  # its cgroup file is gone: discovered anew
    assert scans == [1]
