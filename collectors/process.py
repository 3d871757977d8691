"""The Dynamo processes in the pod (shared process namespace): CPU, memory, threads, fds vs
limit, context switches, children and uptime, per process.

Discovery is by command-line regex (default: Dynamo's frontend and worker entry points), or
an explicit PID / PID file. psutil calls block, so one collection runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import time
from dataclasses import dataclass

import psutil

from agent.facts import ProcessFact, ProcessFacts
from agent.samples import CollectResult
from agent.textsafe import clean
from collectors.base import Collector

PREFIX = "dynamo_sidecar_"


@dataclass(frozen=True)
class Found:
    pid: int
    name: str  # a short label: the python module (`dynamo.frontend`) or the executable
    cmdline: str


def process_label(cmdline: list[str]) -> str:
    for index, arg in enumerate(cmdline[:-1]):
        if arg == "-m":
            return cmdline[index + 1]
    if cmdline:
        return os.path.basename(cmdline[0]) or "unknown"
    return "unknown"


class ProcessFinder:
    """Finds the Dynamo processes; shared by the process and cgroup collectors."""

    def __init__(
        self, patterns: list[str], pid: int = 0, pid_file: str = "", proc_root: str = "/proc"
    ) -> None:
        self.patterns = [re.compile(p) for p in patterns]
        self.pid = pid
        self.pid_file = pid_file
        self.proc_root = proc_root
        self.last_error = ""
        if proc_root != "/proc":
            psutil.PROCFS_PATH = proc_root

    def _explicit_pid(self) -> int:
        if self.pid:
            return self.pid
        if self.pid_file:
            try:
                if not stat.S_ISREG(os.stat(self.pid_file).st_mode):
                    raise ValueError("not a regular file")
                with open(self.pid_file, "rb") as handle:
                    raw = handle.read(32)  # a pid is a few digits; never read a device whole
                return int(raw.decode("ascii").strip())
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                self.last_error = clean(f"pid file {self.pid_file}: {exc}", 200)
        return 0

    def find(self) -> list[Found]:
        self.last_error = ""
        explicit = self._explicit_pid()
        if explicit or self.pid_file:
            if not explicit:
                return []
            try:
                proc = psutil.Process(explicit)
                cmdline = proc.cmdline()
            except (psutil.Error, OSError) as exc:
                self.last_error = f"pid {explicit}: {type(exc).__name__}"
                return []
            return [Found(explicit, process_label(cmdline), " ".join(cmdline))]
        own = os.getpid()
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = proc.info["cmdline"] or []
            except (psutil.Error, OSError):
                continue
            if proc.info["pid"] == own or not cmdline:
                continue
            text = " ".join(cmdline)
            if any(p.search(text) for p in self.patterns):
                found.append(Found(proc.info["pid"], process_label(cmdline), text))
        return found


# psutil status -> the one-letter state `ps` shows; T and D are what a hung process looks like.
STATE_LETTERS = {
    psutil.STATUS_RUNNING: "R",
    psutil.STATUS_SLEEPING: "S",
    psutil.STATUS_DISK_SLEEP: "D",
    psutil.STATUS_STOPPED: "T",
    psutil.STATUS_TRACING_STOP: "t",
    psutil.STATUS_ZOMBIE: "Z",
    psutil.STATUS_DEAD: "X",
    psutil.STATUS_IDLE: "I",
}
STATES = ("R", "S", "D", "T", "t", "Z", "X", "I")
MAX_LISTEN_PORTS = 32


def _sockets(proc: psutil.Process) -> tuple[list[int], int]:
    """(ports the process listens on, its sockets in CLOSE_WAIT). Reads /proc/<pid>/fd, so
    it needs the same UID as the process; without it both are unknown (empty, 0)."""
    try:
        connections = proc.net_connections(kind="tcp")
    except (psutil.AccessDenied, psutil.NoSuchProcess, OSError):
        return [], 0
    listening = sorted({c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN and c.laddr})[
        :MAX_LISTEN_PORTS
    ]
    close_wait = sum(1 for c in connections if c.status == psutil.CONN_CLOSE_WAIT)
    return listening, close_wait


# What changes slowly and costs a scan of every process (children) or of /proc/<pid>/fd and
# the socket tables (listening ports, CLOSE_WAIT owners) is read at most this often per pid.
SLOW_EVERY = 30.0


@dataclass
class _Slow:
    at: float
    children: int
    listen_ports: list[int]
    close_wait: int


def _read_slow(proc: psutil.Process, now: float) -> _Slow:
    try:
        children = len(proc.children(recursive=True))
    except psutil.Error:
        children = 0
    listen_ports, close_wait = _sockets(proc)
    return _Slow(now, children, listen_ports, close_wait)


def _read_process(
    found: Found, now: float, slow: _Slow | None = None
) -> tuple[ProcessFact, list[tuple[str, float, dict[str, str]]], _Slow]:
    proc = psutil.Process(found.pid)
    labels = {"process": found.name, "pid": str(found.pid)}
    out: list[tuple[str, float, dict[str, str]]] = []
    with proc.oneshot():
        cpu = proc.cpu_times()
        memory = proc.memory_info()
        threads = proc.num_threads()
        ctx = proc.num_ctx_switches()
        created = proc.create_time()
        try:
            fds: int | None = proc.num_fds()
        except (psutil.AccessDenied, AttributeError):
            fds = None
        try:
            max_fds: int | None = proc.rlimit(psutil.RLIMIT_NOFILE)[0]
        except (psutil.AccessDenied, AttributeError, OSError):
            max_fds = None
        state = STATE_LETTERS.get(proc.status(), "?")
    if slow is None or now - slow.at >= SLOW_EVERY:
        slow = _read_slow(proc, now)
    children, listen_ports, close_wait = slow.children, slow.listen_ports, slow.close_wait
    out.append(("process_cpu_seconds_total", cpu.user, {**labels, "mode": "user"}))
    out.append(("process_cpu_seconds_total", cpu.system, {**labels, "mode": "system"}))
    out.append(("process_resident_memory_bytes", memory.rss, labels))
    out.append(("process_virtual_memory_bytes", memory.vms, labels))
    out.append(("process_threads", threads, labels))
    if fds is not None:
        out.append(("process_open_fds", fds, labels))
    if max_fds is not None and max_fds >= 0:
        out.append(("process_max_fds", max_fds, labels))
    out.append(("process_context_switches_total", ctx.voluntary, {**labels, "kind": "voluntary"}))
    out.append(("process_context_switches_total", ctx.involuntary, {**labels, "kind": "involuntary"}))
    out.append(("process_children", children, labels))
    out.append(("process_start_time_seconds", created, labels))
    out.append(("process_uptime_seconds", max(0.0, now - created), labels))
    for letter in STATES:
        out.append(("process_state", 1 if state == letter else 0, {**labels, "state": letter}))
    fact = ProcessFact(
        pid=found.pid,
        process=found.name,
        cmdline=found.cmdline[:300],
        rss_bytes=memory.rss,
        threads=threads,
        open_fds=fds,
        max_fds=max_fds,
        cpu_seconds=cpu.user + cpu.system,
        start_time=created,
        state=state,
        listen_ports=listen_ports,
        close_wait=close_wait,
    )
    return fact, out, slow


class ProcessCollector(Collector):
    name = "process"

    def __init__(self, finder: ProcessFinder, interval: float, timeout: float) -> None:
        super().__init__(interval, timeout)
        self.finder = finder
        self._state_since: dict[tuple[int, str], float] = {}  # (pid, state) -> first seen
        self._slow: dict[int, _Slow] = {}  # pid -> the slowly changing readings

    def _collect_sync(self) -> CollectResult:
        result = CollectResult()
        now = time.time()
        found = self.finder.find()
        processes: list[ProcessFact] = []
        states: dict[tuple[int, str], float] = {}
        slow: dict[int, _Slow] = {}
        for item in found:
            try:
                fact, samples, slow[item.pid] = _read_process(item, now, self._slow.get(item.pid))
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue  # exited between discovery and reading: not an error
            except psutil.AccessDenied:
                processes.append(ProcessFact(item.pid, item.name, item.cmdline[:300], error="access denied"))
                continue
            # When the process entered its current state: a stopped (T) or
            # uninterruptible (D) process matters by how long it has stayed there.
            key = (item.pid, fact.state)
            fact.state_since = states.setdefault(key, self._state_since.get(key, now))
            processes.append(fact)
            for name, value, labels in samples:
                result.add(PREFIX + name, value, **labels)
        self._state_since = states
        self._slow = slow  # only pids still there
        facts = ProcessFacts(processes, self.finder.last_error, now)
        result.add(PREFIX + "processes_matched", len(facts.readable()))
        result.facts = facts
        return result

    async def collect(self) -> CollectResult:
        return await asyncio.to_thread(self._collect_sync)
