"""What the sidecar costs its pod: CPU (% of one core) and RSS over a run, watching the
simulated Dynamo (the recorded real /metrics, ~1,300 series) or a real Dynamo 1.6.1, with all
collectors on, 8 fake GPUs (the tests' fake libnvidia-ml), canaries on, and no scrapes.

    python bench/overhead.py                       # 300 s at the default intervals, simulator
    python bench/overhead.py --interval 1          # every collector at 1 s
    python bench/overhead.py --real                # a real Dynamo frontend + mocker (DYNAMO_PYTHON)
    python bench/overhead.py --seconds 300 --py-spy out.txt    # where the time goes (py-spy)
    python bench/overhead.py --smoke               # 5 s
Targets (issue 14): <= 0.5 % of one core at the defaults, RSS <= 60 MB, no growth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gpu import fake_gpu_env  # noqa: E402
from tests.helpers import free_port, wait_for_sync  # noqa: E402
from tests.procs import PYTHON, http_get, start_sim  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """The process's CPU time (every thread, ended ones too) by the scheduler's own count, to
    the nanosecond: /proc's utime + stime move in 10 ms ticks, and an idle sidecar uses ~20
    of them in a 75 s run. The tick count where the process clock cannot be read."""
    with contextlib.suppress(OSError):
        return time.clock_gettime(((~pid) << 3) | 2)  # the process's CPUCLOCK_SCHED clock id
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _thread_seconds(task: Path, stat_fields: list[str]) -> float:
    """A thread's CPU time: se.sum_exec_runtime (ms, to the ns) where /proc shows it."""
    with contextlib.suppress(OSError, ValueError):
        for line in (task / "sched").read_text().splitlines():
            if line.startswith("se.sum_exec_runtime"):
                return float(line.split(":", 1)[1]) / 1000
    return (int(stat_fields[11]) + int(stat_fields[12])) / TICKS


def thread_cpu(pid: int) -> dict[int, tuple[float, int]]:
    """(CPU seconds, voluntary context switches: wake-ups) per thread (native id)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        switches = next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_ctxt")), 0
        )
        out[int(task.name)] = (_thread_seconds(task, fields), switches)
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by native id, from `py-spy dump` (empty without py-spy)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {}
    dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
    names = {}
    for line in dump.stdout.splitlines():
        if line.startswith("Thread "):  # Thread 16425 (idle): "worker-x"
            tid, _, name = line[len("Thread ") :].partition(" ")
            if tid.isdigit():
                names[int(tid)] = name.rpartition(": ")[2].strip('"')
    return names


def by_thread(
    before: dict[int, tuple[float, int]],
    after: dict[int, tuple[float, int]],
    names: dict[int, str],
    seconds: float,
) -> dict[str, dict[str, float]]:
    """% of one core and wake-ups per second, per thread over the run, busiest first (pool
    threads by their name)."""
    shares: dict[str, list[float]] = {}
    for tid, (cpu, switches) in after.items():
        cpu0, switches0 = before.get(tid, (0.0, 0))
        entry = shares.setdefault(names.get(tid, f"tid {tid}"), [0.0, 0.0])
        entry[0] += 100 * (cpu - cpu0) / seconds
        entry[1] += (switches - switches0) / seconds
    return {
        name: {"cpu_percent": round(cpu, 3), "wakeups_per_second": round(wakeups, 2)}
        for name, (cpu, wakeups) in sorted(shares.items(), key=lambda kv: -kv[1][0])
        if cpu > 0 or wakeups > 0
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fake_idle_gpus(workdir: Path) -> dict[str, str]:
    """fake_gpu_env with 8 idle GPUs: an idle pod's (bench/gpu.py's default is busy and
    power-capped, a warning finding, never a quiet pod)."""
    return fake_gpu_env(workdir, idle=True)


def quiet_state(port: int) -> dict[str, Any]:
    """The sidecar's quiet judgment (/status), {} when it did not answer."""
    status, body = http_get(f"http://127.0.0.1:{port}/status")
    return json.loads(body).get("quiet", {}) if status == 200 else {}


def run(seconds: float, interval: float | None, real: bool, extra: list[str], spy: str = "") -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    env = fake_idle_gpus(workdir)
    gcc = "FAKE_NVML_STATE" in env
    dynamo = None
    sim = None
    if real:
        from tests.real_dynamo import RealDynamo, dynamo_python, own_processes

        python = dynamo_python()
        if python is None:
            raise SystemExit("no real Dynamo installed (DYNAMO_PYTHON)")
        dynamo = RealDynamo(python, workdir)
        dynamo.start_worker()
        dynamo.start_frontend()
        dynamo.wait_model()
        targets = ["--frontend-url", dynamo.frontend_url, "--worker-system-urls", dynamo.worker_url]
        targets += ["--process-patterns", own_processes(dynamo)]
    else:
        sim, ports = start_sim()
        targets = [
            "--frontend-url",
            f"http://127.0.0.1:{ports['frontend']}",
            "--worker-system-urls",
            f"http://127.0.0.1:{ports['worker']}",
            "--process-pid",
            str(ports["pid"]),
        ]
    port = free_port()
    args = [PYTHON, "-m", "agent.cli", "run", "--listen-host", "127.0.0.1", "--listen-port", str(port)]
    args += ["--log-format", "json", "--log-level", "warning", *targets, *extra]
    if interval:
        for key in ("dynamo-interval", "process-interval", "gpu-interval", "tcp-interval"):
            args += [f"--{key}", str(interval)]
        args += ["--collector-timeout", str(min(4.0, interval * 0.8))]
    sidecar = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_sync(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, timeout=60, what="ready")
        time.sleep(min(15.0, seconds / 4))  # warm-up: first collections, imports, first renders
        # An idle pod settles into quiet (collectors slowed, agent/runtime/quiet.py) once no
        # traffic was seen for quiet_after (30 s): measure the settled pod, as it runs for hours.
        if seconds >= 30:
            with contextlib.suppress(AssertionError):
                wait_for_sync(lambda: quiet_state(port).get("quiet"), timeout=60, what="quiet")
        quiet_at_start = quiet_state(port)
        threads0 = thread_cpu(sidecar.pid)
        cpu0, rss0, t0 = cpu_seconds(sidecar.pid), rss_mb(sidecar.pid), time.monotonic()
        if spy:
            subprocess.run(
                [shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(sidecar.pid), "--duration", str(int(seconds)), "--rate", os.environ.get("SPY_RATE", "200"),
                 "--threads", "--format", "raw", "-o", spy, "--nonblocking"],
                capture_output=True, timeout=seconds + 120,
            )  # fmt: skip
            top = summarize(spy)
        else:
            time.sleep(seconds)
        cpu1, rss1, t1 = cpu_seconds(sidecar.pid), rss_mb(sidecar.pid), time.monotonic()
        threads1 = thread_cpu(sidecar.pid)
        threads = by_thread(threads0, threads1, thread_names(sidecar.pid), t1 - t0)
        quiet_at_end = quiet_state(port)
        _, body = http_get(f"http://127.0.0.1:{port}/metrics")
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    finally:
        sidecar.send_signal(signal.SIGTERM)
        sidecar.communicate(timeout=60)
        if sim is not None:
            sim.kill()
            sim.wait(timeout=10)
        if dynamo is not None:
            dynamo.stop()
    out: dict[str, Any] = {
        "target": "real Dynamo 1.6.1" if real else "simulator",
        "interval": interval or "defaults (5 s; tcp 10 s)",
        "seconds": round(t1 - t0, 1),
        "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
        "rss_mb_start": round(rss0, 1),
        "rss_mb_end": round(rss1, 1),
        "exposition_series": series,
        # Whether the pod was quiet (collectors slowed) when the measurement began and ended.
        "quiet": {
            "start": quiet_at_start.get("quiet"),
            "end": quiet_at_end.get("quiet"),
            "why_not": quiet_at_end.get("why_not"),
        },
        "fake_gpus": 8 if gcc else 0,
        # A thread's CPU includes what the fake NVML library does in it (the nvml-xid
        # thread's polling of its events file): real NVML blocks in the driver instead.
        "cpu_percent_by_thread": threads,
    }
    if spy:
        out["py_spy_top_self"] = top
    return out


def summarize(path: str, count: int = 15) -> list[tuple[str, float]]:
    """Functions by share of the samples in which they were on top of a busy stack."""
    totals: dict[str, int] = {}
    busy = 0
    for line in Path(path).read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue  # py-spy's own notes ("... (N seconds)")
        frames = stack.split(";")
        top = frames[-1] if frames else "?"
        if any(
            idle in top for idle in ("select", "epoll", "wait (threading", "_worker (concurrent", "sleep")
        ):
            continue
        busy += int(number)
        totals[top] = totals.get(top, 0) + int(number)
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:count]
    return [(name[:120], round(100 * n / max(1, busy), 1)) for name, n in ranked]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--interval", type=float, default=None)
    parser.add_argument("--real", action="store_true")
    parser.add_argument(
        "--py-spy",
        default="",
        help="sample every thread with py-spy over the run; collapsed stacks to this file",
    )
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("extra", nargs="*", help="more sidecar flags, after --")
    args = parser.parse_args()
    seconds = 5.0 if args.smoke else args.seconds
    print(json.dumps(run(seconds, args.interval, args.real, args.extra, args.py_spy), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
