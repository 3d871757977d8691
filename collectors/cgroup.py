"""The Dynamo container's cgroup (memory, OOM events, CPU quota and throttling) and pressure
stall information, for the host (/proc/pressure) and the cgroup (*.pressure).

cgroup v2 first; cgroup v1 and hybrid hosts (v1 controllers plus a v2 `unified` mount) are
read too. The watched cgroup is the first Dynamo process's, when the sidecar can see it
(shared process namespace and a host-wide cgroup mount), else the sidecar's own, which in a
pod shares the pod-level limits. A missing file is not an error: that signal is absent.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.core import metrics as m
from agent.core.samples import CollectResult
from collectors.base import Collector, CollectorSpec, register
from collectors.process import Found, ProcessFinder

if TYPE_CHECKING:
    from agent.config import Config

V1_UNLIMITED = 2**60  # v1 reports "unlimited" as a page-rounded 2^63-1


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read(1 << 20)  # cgroup and /proc files are small; never read a device whole
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _kv(path: str) -> dict[str, int]:
    text = _read(path) or ""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_pressure(text: str) -> dict[str, dict[str, float]]:
    """`some avg10=0.00 avg60=0.00 avg300=0.00 total=0` lines -> {kind: {key: value}}."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in {"some", "full"}:
            continue
        values: dict[str, float] = {}
        for field in parts[1:]:
            key, _, raw = field.partition("=")
            try:
                values[key] = float(raw)
            except ValueError:
                continue
        out[parts[0]] = values
    return out


@dataclass
class CgroupPaths:
    version: str  # "v2" | "v1" | "none"
    scope: str  # "dynamo" | "self"
    path: str  # the cgroup path as /proc/<pid>/cgroup names it
    unified: str = ""  # v2 (or hybrid unified) directory
    memory: str = ""  # v1 controller directories
    cpu: str = ""
    cpuacct: str = ""


def resolve(cgroup_root: str, proc_cgroup_text: str, scope: str) -> CgroupPaths:
    v1: dict[str, str] = {}
    v2_path = ""
    for line in proc_cgroup_text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2_path = path
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path

    def pick(base: str, path: str) -> str:
        candidate = os.path.join(base, path.lstrip("/"))
        # Inside a container with its own cgroup namespace the mount *is* our cgroup.
        return candidate if os.path.isdir(candidate) else base

    if os.path.exists(os.path.join(cgroup_root, "cgroup.controllers")):
        return CgroupPaths("v2", scope, v2_path or "/", unified=pick(cgroup_root, v2_path or "/"))
    if v1:
        paths = CgroupPaths("v1", scope, v1.get("memory", "/"))
        for controller in ("memory", "cpu", "cpuacct"):
            base = os.path.join(cgroup_root, controller)
            if os.path.isdir(base):
                setattr(paths, controller, pick(base, v1.get(controller, "/")))
        unified = os.path.join(cgroup_root, "unified")
        if os.path.isdir(unified):
            paths.unified = pick(unified, v2_path or "/")
        return paths
    return CgroupPaths("none", scope, "/")


class CgroupCollector(Collector):
    name = "cgroup"

    def __init__(
        self, finder: ProcessFinder, cgroup_root: str, proc_root: str, interval: float, timeout: float
    ) -> None:
        super().__init__(interval, timeout)
        self.finder = finder
        self.cgroup_root = cgroup_root
        self.proc_root = proc_root

    def _paths(self) -> CgroupPaths:
        # The process collector's discovery from this cycle; when that process has gone
        # since (its cgroup file unreadable), a discovery of our own.
        found = self.finder.recent(self.interval)
        paths = self._first_process_paths(found)
        if paths is None and found:
            paths = self._first_process_paths(self.finder.find())
        if paths is not None:
            return paths
        return resolve(self.cgroup_root, _read(os.path.join(self.proc_root, "self", "cgroup")) or "", "self")

    def _first_process_paths(self, found: list[Found]) -> CgroupPaths | None:
        for process in found[:1]:
            text = _read(os.path.join(self.proc_root, str(process.pid), "cgroup"))
            if text:
                return resolve(self.cgroup_root, text, "dynamo")
        return None

    def _collect_sync(self) -> CollectResult:
        result = CollectResult()
        paths = self._paths()
        # Samples only, no facts: rules read the cgroup's numbers from the samples (and their
        # history), so facts beside them would be a second copy nothing reads.
        result.add(m.CGROUP_INFO.sample(1, version=paths.version, path=paths.path, scope=paths.scope))
        if paths.version == "v2":
            self._v2(result, paths.unified)
        elif paths.version == "v1":
            self._v1(result, paths)
        if paths.unified:
            self._pressure(result, paths.unified, "cgroup")
        self._pressure(result, os.path.join(self.proc_root, "pressure"), "host", host=True)
        return result

    def _v2(self, result: CollectResult, base: str) -> None:
        usage = _read_int(os.path.join(base, "memory.current"))
        if usage is not None:
            result.add(m.CGROUP_MEMORY_USAGE_BYTES.sample(usage))
        limit = _read_int(os.path.join(base, "memory.max"))  # "max" parses as None
        if limit is not None:
            result.add(m.CGROUP_MEMORY_LIMIT_BYTES.sample(limit))
        for event, count in _kv(os.path.join(base, "memory.events")).items():
            if event in {"oom", "oom_kill", "max", "high", "low", "oom_group_kill"}:
                result.add(m.CGROUP_MEMORY_EVENTS_TOTAL.sample(count, event=event))
        cpu = _kv(os.path.join(base, "cpu.stat"))
        self._cpu_stat(
            result,
            cpu.get("usage_usec", -1) / 1e6,
            cpu.get("nr_periods"),
            cpu.get("nr_throttled"),
            cpu.get("throttled_usec", -1) / 1e6,
        )
        quota_text = (_read(os.path.join(base, "cpu.max")) or "").split()
        if len(quota_text) == 2 and quota_text[0] != "max":
            try:
                cores = int(quota_text[0]) / int(quota_text[1])
                result.add(m.CGROUP_CPU_LIMIT_CORES.sample(cores))
            except (ValueError, ZeroDivisionError):
                pass

    def _v1(self, result: CollectResult, paths: CgroupPaths) -> None:
        if paths.memory:
            usage = _read_int(os.path.join(paths.memory, "memory.usage_in_bytes"))
            if usage is not None:
                result.add(m.CGROUP_MEMORY_USAGE_BYTES.sample(usage))
            limit = _read_int(os.path.join(paths.memory, "memory.limit_in_bytes"))
            if limit is not None and limit < V1_UNLIMITED:
                result.add(m.CGROUP_MEMORY_LIMIT_BYTES.sample(limit))
            oom = _kv(os.path.join(paths.memory, "memory.oom_control"))
            if "oom_kill" in oom:
                result.add(m.CGROUP_MEMORY_EVENTS_TOTAL.sample(oom["oom_kill"], event="oom_kill"))
            failcnt = _read_int(os.path.join(paths.memory, "memory.failcnt"))
            if failcnt is not None:
                # v1 failcnt counts hits of the limit: the same as v2's `max` event.
                result.add(m.CGROUP_MEMORY_EVENTS_TOTAL.sample(failcnt, event="max"))
        if paths.cpu:
            cpu = _kv(os.path.join(paths.cpu, "cpu.stat"))
            usage_ns = _read_int(os.path.join(paths.cpuacct, "cpuacct.usage")) if paths.cpuacct else None
            self._cpu_stat(
                result,
                usage_ns / 1e9 if usage_ns is not None else -1,
                cpu.get("nr_periods"),
                cpu.get("nr_throttled"),
                cpu.get("throttled_time", -1) / 1e9,
            )
            quota = _read_int(os.path.join(paths.cpu, "cpu.cfs_quota_us"))
            period = _read_int(os.path.join(paths.cpu, "cpu.cfs_period_us"))
            if quota is not None and period and quota > 0:
                result.add(m.CGROUP_CPU_LIMIT_CORES.sample(quota / period))

    @staticmethod
    def _cpu_stat(
        result: CollectResult,
        usage: float,
        periods: int | None,
        throttled: int | None,
        throttled_seconds: float,
    ) -> None:
        if usage >= 0:
            result.add(m.CGROUP_CPU_USAGE_SECONDS_TOTAL.sample(usage))
        if periods is not None:
            result.add(m.CGROUP_CPU_PERIODS_TOTAL.sample(periods))
        if throttled is not None:
            result.add(m.CGROUP_CPU_THROTTLED_PERIODS_TOTAL.sample(throttled))
        if throttled_seconds >= 0:
            result.add(m.CGROUP_CPU_THROTTLED_SECONDS_TOTAL.sample(throttled_seconds))

    @staticmethod
    def _pressure(result: CollectResult, base: str, scope: str, host: bool = False) -> None:
        for resource in ("cpu", "memory", "io"):
            path = os.path.join(base, resource if host else f"{resource}.pressure")
            text = _read(path)
            if not text:
                continue
            for kind, values in parse_pressure(text).items():
                for window in ("avg10", "avg60", "avg300"):
                    if window in values:
                        result.add(
                            m.PRESSURE_STALL_RATIO.sample(
                                values[window] / 100.0,
                                scope=scope,
                                resource=resource,
                                kind=kind,
                                window=window[3:] + "s",
                            )
                        )
                if "total" in values:
                    result.add(
                        m.PRESSURE_STALLED_SECONDS_TOTAL.sample(
                            values["total"] / 1e6,
                            scope=scope,
                            resource=resource,
                            kind=kind,
                        )
                    )

    async def collect(self) -> CollectResult:
        return await asyncio.to_thread(self._collect_sync)


def _build(config: Config, finder: ProcessFinder) -> CgroupCollector:
    return CgroupCollector(
        finder, config.cgroup_root, config.proc_root, config.process_interval, config.collector_timeout
    )


register(
    CollectorSpec(
        "cgroup",
        order=20,
        enabled=lambda config: True,
        interval=lambda config: config.process_interval,
        factory=lambda config, hooks: _build(config, hooks.finder),
    )
)
