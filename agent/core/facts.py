"""Typed facts: what each collector learned beyond its samples (parsed health bodies, process
states, socket owners, GPU readings), handed to the rules, the canary and the drain.

One dataclass per source. A rule reads `ctx.health.endpoints["worker"].probe().outcome`, not
a dict by string key, so a renamed field fails type checking instead of matching nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# --- Dynamo health (collectors/dynamo_health.py) ---------------------------------------------


class Outcome(StrEnum):
    """A health probe's outcome (ProbeFact.outcome). A StrEnum, so it equals the plain strings
    the collector writes and the metrics carry: rules compare against members, not literals."""

    OK = "ok"
    UNHEALTHY = "unhealthy"  # answered, with a status that is not healthy/ready
    REFUSED = "refused"
    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"
    MALFORMED = "malformed"
    ERROR = "error"


@dataclass
class ProbeFact:
    """One health probe (health or live) of one endpoint, as last seen."""

    outcome: str = ""  # an Outcome value ("" before the first probe)
    status: str = ""  # the body's status string
    status_code: int = 0
    elapsed_seconds: float = 0.0
    error: str = ""
    since: float = 0.0  # when the current (outcome, status) began
    transitions: int = 0
    body_excerpt: str = ""


@dataclass
class PortAnswer:
    """Dynamo's health answering on another port than the configured one."""

    port: int
    url: str
    status: str
    seen_at: float


@dataclass
class EndpointFacts:
    kind: str  # frontend | worker
    url: str
    probes: dict[str, ProbeFact] = field(default_factory=dict)
    first_ok_at: float = 0.0  # when it first answered ok; 0 while it never has
    answers_on: PortAnswer | None = None  # the configured port refuses; Dynamo answers here
    # frontend /health and /v1/models
    instance_ids: list[str] | None = None  # distinct worker instance ids
    instances_since: float = 0.0  # when the instance count last changed
    registered: list[str] | None = None  # dyn:// endpoints /health lists
    stage: str = ""  # "draining" while the frontend shuts down
    models: list[str] | None = None  # None when /v1/models could not be read
    models_error: str = ""
    models_seen: dict[str, float] = field(default_factory=dict)  # model -> last listed
    # model -> when its current listing began, or its last one for a model no longer listed
    # (a model listed again after a gap starts anew)
    models_listed_since: dict[str, float] = field(default_factory=dict)
    # worker system /health
    endpoints: dict[str, str] | None = None  # Dynamo endpoint -> ready | notready
    uptime_seconds: float | None = None

    def probe(self, name: str = "health") -> ProbeFact:
        return self.probes.get(name) or ProbeFact()


@dataclass
class HealthFacts:
    endpoints: dict[str, EndpointFacts] = field(default_factory=dict)
    time: float = 0.0


# --- Dynamo /metrics scrapes (collectors/dynamo_metrics.py) ----------------------------------


@dataclass
class ScrapeFact:
    url: str
    status_code: int = 0
    elapsed_seconds: float = 0.0
    up: bool = False
    reason: str = ""  # why not up: refused | timeout | http_error | malformed | too_large ...
    error: str = ""
    failing_since: float = 0.0  # when this run of failed scrapes was first seen; 0 while up
    body_excerpt: str = ""
    series: int = 0
    skipped_lines: int = 0
    # Dynamo instance ids (hex `worker_id` labels) the worker's own handler series carry: the
    # ids a frontend must list (as decimals) for this worker to be served.
    worker_ids: list[str] = field(default_factory=list)


@dataclass
class MetricsFacts:
    endpoints: dict[str, ScrapeFact] = field(default_factory=dict)
    time: float = 0.0


# --- processes (collectors/process.py) ---------------------------------------------------------


@dataclass
class ProcessFact:
    pid: int
    process: str  # short label: the python module (dynamo.frontend) or the executable
    cmdline: str = ""
    error: str = ""  # set (and the rest unknown) when the process could not be read
    rss_bytes: int = 0
    threads: int = 0
    open_fds: int | None = None
    max_fds: int | None = None
    cpu_seconds: float = 0.0
    start_time: float = 0.0
    state: str = "?"  # R S D T t Z X I, as `ps` shows it
    state_since: float = 0.0
    listen_ports: list[int] = field(default_factory=list)  # needs the same UID (/proc/<pid>/fd)
    close_wait: int = 0
    # The sidecar's own process, watched through process_pid (the demo, whose simulated
    # Dynamo runs inside it): measured like any other, but never a Dynamo frontend or worker.
    own: bool = False

    @property
    def role(self) -> str:
        if self.own:
            return "sidecar"
        return "frontend" if self.process == "dynamo.frontend" else "worker"

    @property
    def name(self) -> str:
        return f"{self.process}/{self.pid}"


@dataclass
class ProcessFacts:
    processes: list[ProcessFact] = field(default_factory=list)
    discovery_error: str = ""
    time: float = 0.0

    def readable(self) -> list[ProcessFact]:
        return [p for p in self.processes if not p.error]

    def of_role(self, role: str) -> list[ProcessFact]:
        return [p for p in self.readable() if p.role == role]


# cgroup (collectors/cgroup.py): no facts. Its readings are all numbers, which rules read from
# the samples and their history.


# --- TCP (collectors/tcp.py) ---------------------------------------------------------------------


@dataclass
class DependencyProbe:
    role: str
    # ok | refused | timeout | dns_error | dns_timeout | unreachable | http_error | unhealthy | error
    outcome: str
    error: str = ""
    dns_seconds: float | None = None
    connect_seconds: float | None = None
    status: int = 0
    since: float = 0.0  # when the current outcome was first seen
    last_ok: float = 0.0  # when it last answered ok (0: never): a failure began after it


@dataclass
class TcpFacts:
    method: str = ""
    netlink_error: str = ""
    listening: dict[str, bool] = field(default_factory=dict)  # port -> listening
    service_ports: dict[str, str] = field(default_factory=dict)  # port -> role
    close_wait: dict[str, int] = field(default_factory=dict)  # peer role -> sockets
    sockets: int = 0
    kernel: dict[str, int] = field(default_factory=dict)
    probes: dict[str, DependencyProbe] = field(default_factory=dict)
    time: float = 0.0


# --- GPUs (collectors/gpu.py) --------------------------------------------------------------------


@dataclass
class GpuFact:
    uuid: str
    name: str = ""
    pci_bus_id: str = ""
    lost: bool = False
    utilization: float | None = None  # 0-1
    memory_used: int | None = None
    memory_total: int | None = None
    temperature: float | None = None
    temperature_thresholds: dict[str, float] = field(default_factory=dict)  # slowdown, shutdown
    power_watts: float | None = None
    power_limit_watts: float | None = None
    clock_event_reasons: list[str] = field(default_factory=list)
    ecc: dict[str, int] = field(default_factory=dict)  # "uncorrected_volatile" -> count
    remap_pending: int = 0
    remap_failure: int = 0
    processes: list[dict[str, Any]] = field(default_factory=list)  # Dynamo processes on it


@dataclass
class GpuFacts:
    available: bool = False
    reason: str = ""
    gpus: dict[str, GpuFact] = field(default_factory=dict)  # index -> GPU
    recent_xids: list[dict[str, Any]] = field(default_factory=list)
    event_error: str = ""
    time: float = field(default_factory=time.time)


# --- logs (collectors/dynamo_logs.py) --------------------------------------------------------------


@dataclass
class LogFacts:
    files: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    errors: Any = None  # collectors.dynamo_logs.ErrorRing
    requests: Any = None  # collectors.dynamo_logs.RequestIndex
    time: float = 0.0
