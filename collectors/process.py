"""The Dynamo processes in the pod (shared process namespace): CPU, memory, threads, fds vs
limit, context switches, children and uptime, per process.

Discovery is by command-line regex (default: Dynamo's frontend and worker entry points), or
an explicit PID / PID file. psutil calls block, so one collection runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from agent.core import metrics as m
from agent.core.facts import ProcessFact, ProcessFacts
from agent.core.handles import Handle
from agent.core.samples import CollectResult
from agent.core.textsafe import clean
from collectors.base import Collector, CollectorSpec, register
from collectors.sockets import CLOSE_WAIT, LISTEN, sockets_by_inode

if TYPE_CHECKING:
    from agent.config import Config


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
        self._known: dict[int, _Seen] = {}  # pid -> when seen, when its cmdline was read, match
        self._found: list[Found] = []
        self._found_at = -math.inf
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

    def recent(self, max_age: float) -> list[Found]:
        """The last find() when it is at most `max_age` seconds old (the process collector's,
        for the cgroup collector on the same interval), else a new one."""
        if time.monotonic() - self._found_at <= max_age:
            return self._found
        return self.find()

    def find(self) -> list[Found]:
        found = self._find()
        self._found, self._found_at = found, time.monotonic()
        return found

    def _find(self) -> list[Found]:
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
        return self._scan()

    def _scan(self) -> list[Found]:
        """Every process whose command line matches. A process's command line is read when
        it is first seen, every scan while it is young (it may still exec into Dynamo) or
        matches (it may exec out of it), and otherwise once a RECHECK_EVERY: a pod's other
        processes cost a directory listing, not a read each, per scan."""
        now = time.monotonic()
        try:
            names = os.listdir(self.proc_root)
        except OSError as exc:
            self.last_error = clean(f"{self.proc_root}: {exc}", 200)
            return []
        own = os.getpid()
        known = self._known
        seen: dict[int, _Seen] = {}
        found = []
        for name in names:
            if not name.isdigit():
                continue
            pid = int(name)
            if pid == own:
                continue
            entry = known.get(pid)
            if (
                entry is None
                or entry.found is not None
                or now - entry.first < YOUNG
                or now - entry.checked >= RECHECK_EVERY
            ):
                cmdline = read_cmdline(os.path.join(self.proc_root, name, "cmdline"))
                if cmdline is None:
                    continue  # gone, or not ours to read: looked at again next scan
                text = " ".join(cmdline)
                match = (
                    Found(pid, process_label(cmdline), text)
                    if text and any(p.search(text) for p in self.patterns)
                    else None
                )
                entry = _Seen(entry.first if entry is not None else now, now, match)
            seen[pid] = entry
            if entry.found is not None:
                found.append(entry.found)
        self._known = seen  # only processes still there
        return found


# A process first seen less than this long ago has its command line read every scan (a
# shell that has not exec'd into Dynamo yet); an older one that did not match, this often.
YOUNG = 60.0
RECHECK_EVERY = 60.0
MAX_CMDLINE = 1 << 16


@dataclass(slots=True)
class _Seen:
    first: float
    checked: float
    found: Found | None


def read_cmdline(path: str) -> list[str] | None:
    """A /proc/<pid>/cmdline as psutil splits it (NUL-separated; a process that rewrote its
    title may use spaces); None when the process is gone or unreadable."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CMDLINE)
    except OSError:
        return None
    data = raw.decode("utf-8", "replace")
    if not data:
        return []
    sep = "\x00" if data.endswith("\x00") else " "
    if data.endswith(sep):
        data = data[:-1]
    cmdline = data.split(sep)
    if sep == "\x00" and len(cmdline) == 1 and " " in data:
        cmdline = data.split(" ")
    return cmdline


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


def socket_inodes(fd_dir: str) -> set[int] | None:
    """The inodes of the sockets among a process's open files; None without the right to
    read /proc/<pid>/fd (another UID)."""
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None
    inodes = set()
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _sockets(
    pid: int, proc_root: str, table: Callable[[], dict[int, tuple[int, int]]]
) -> tuple[list[int], int]:
    """(ports the process listens on, its sockets in CLOSE_WAIT): its socket inodes matched
    against the namespace's LISTEN and CLOSE_WAIT sockets. Needs the same UID as the process;
    without it both are unknown (empty, 0)."""
    inodes = socket_inodes(os.path.join(proc_root, str(pid), "fd"))
    if not inodes:
        return [], 0
    listening: set[int] = set()
    close_wait = 0
    for inode in inodes:
        state_port = table().get(inode)
        if state_port is None:
            continue
        if state_port[0] == LISTEN:
            listening.add(state_port[1])
        else:
            close_wait += 1
    return sorted(listening)[:MAX_LISTEN_PORTS], close_wait


# What changes slowly and costs a scan of every process (children) or of /proc/<pid>/fd and
# the socket tables (listening ports, CLOSE_WAIT owners) is read at most this often per pid.
SLOW_EVERY = 30.0


@dataclass
class _Slow:
    at: float
    children: int
    listen_ports: list[int]
    close_wait: int


def _read_slow(
    proc: psutil.Process, now: float, proc_root: str, table: Callable[[], dict[int, tuple[int, int]]]
) -> _Slow:
    try:
        children = len(proc.children(recursive=True))
    except psutil.Error:
        children = 0
    listen_ports, close_wait = _sockets(proc.pid, proc_root, table)
    return _Slow(now, children, listen_ports, close_wait)


def _read_process(
    found: Found,
    now: float,
    slow: _Slow | None = None,
    proc_root: str = "/proc",
    table: Callable[[], dict[int, tuple[int, int]]] | None = None,
) -> tuple[ProcessFact, list[tuple[Handle, float, dict[str, str]]], _Slow]:
    proc = psutil.Process(found.pid)
    labels = {"process": found.name, "pid": str(found.pid)}
    out: list[tuple[Handle, float, dict[str, str]]] = []
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
        slow = _read_slow(proc, now, proc_root, table or _listen_and_close_wait(proc_root))
    children, listen_ports, close_wait = slow.children, slow.listen_ports, slow.close_wait
    out.append((m.PROCESS_CPU_SECONDS_TOTAL, cpu.user, {**labels, "mode": "user"}))
    out.append((m.PROCESS_CPU_SECONDS_TOTAL, cpu.system, {**labels, "mode": "system"}))
    out.append((m.PROCESS_RESIDENT_MEMORY_BYTES, memory.rss, labels))
    out.append((m.PROCESS_VIRTUAL_MEMORY_BYTES, memory.vms, labels))
    out.append((m.PROCESS_THREADS, threads, labels))
    if fds is not None:
        out.append((m.PROCESS_OPEN_FDS, fds, labels))
    if max_fds is not None and max_fds >= 0:
        out.append((m.PROCESS_MAX_FDS, max_fds, labels))
    out.append((m.PROCESS_CONTEXT_SWITCHES_TOTAL, ctx.voluntary, {**labels, "kind": "voluntary"}))
    out.append((m.PROCESS_CONTEXT_SWITCHES_TOTAL, ctx.involuntary, {**labels, "kind": "involuntary"}))
    out.append((m.PROCESS_CHILDREN, children, labels))
    out.append((m.PROCESS_START_TIME_SECONDS, created, labels))
    out.append((m.PROCESS_UPTIME_SECONDS, max(0.0, now - created), labels))
    for letter in STATES:
        out.append((m.PROCESS_STATE, 1 if state == letter else 0, {**labels, "state": letter}))
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
        own=found.pid == os.getpid(),
    )
    return fact, out, slow


def _listen_and_close_wait(proc_root: str) -> Callable[[], dict[int, tuple[int, int]]]:
    """The namespace's LISTEN and CLOSE_WAIT sockets, read on first use and then shared by
    every process of one collection."""
    table: dict[int, tuple[int, int]] | None = None

    def get() -> dict[int, tuple[int, int]]:
        nonlocal table
        if table is None:
            table = sockets_by_inode((LISTEN, CLOSE_WAIT), proc_root)
        return table

    return get


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
        table = _listen_and_close_wait(self.finder.proc_root)
        for item in found:
            try:
                fact, samples, slow[item.pid] = _read_process(
                    item, now, self._slow.get(item.pid), self.finder.proc_root, table
                )
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
            for handle, value, labels in samples:
                result.add(handle.sample_of(value, labels))
        self._state_since = states
        self._slow = slow  # only pids still there
        facts = ProcessFacts(processes, self.finder.last_error, now)
        result.add(m.PROCESSES_MATCHED.sample(len(facts.readable())))
        result.facts = facts
        return result

    async def collect(self) -> CollectResult:
        return await asyncio.to_thread(self._collect_sync)


def finder_from(config: Config) -> ProcessFinder:
    return ProcessFinder(
        config.process_patterns, config.process_pid, config.process_pid_file, config.proc_root
    )


register(
    CollectorSpec(
        "process",
        order=10,
        enabled=lambda config: True,
        interval=lambda config: config.process_interval,
        factory=lambda config, hooks: ProcessCollector(
            hooks.finder, config.process_interval, config.collector_timeout
        ),
    )
)
