"""Process collector against real child processes; cgroup collector against fake v1 and v2
trees and against this machine's real cgroup and /proc/pressure."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collectors.cgroup import CgroupCollector, parse_pressure, resolve
from collectors.process import ProcessCollector, ProcessFinder, process_label


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
    cpu = _values(result, "process_cpu_seconds_total")
    assert (("mode", "user"), *labels) in {tuple(sorted(k)) for k in cpu} or any(
        dict(k).get("mode") == "user" for k in cpu
    )
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
    assert result.facts.version == "v1"
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
    assert result.facts.version == "none"
    assert [s.name for s in result.samples] == ["dynamo_sidecar_cgroup_info"]


async def test_real_machine_cgroup_and_pressure() -> None:
    result = await CgroupCollector(_no_process_finder(), "/sys/fs/cgroup", "/proc", 1, 5).collect()
    names = {s.name for s in result.samples}
    assert result.facts.version in {"v1", "v2"}
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
