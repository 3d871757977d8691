"""The collector contract the scheduler runs, and the registry the runtime builds them from."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.core.samples import CollectResult

if TYPE_CHECKING:
    from agent.config import Config
    from collectors.process import ProcessFinder


class Collector(abc.ABC):
    """A source of samples. `collect()` is called every `interval` seconds and is cancelled
    after `timeout`; raising marks only this collector failed for this run."""

    name: str = "collector"
    # Whether the scheduler may run it slower while the pod is quiet (Config.quiet_slowdown):
    # not the sources that tell a fault first (health probes, error logs).
    slows_when_quiet: bool = True

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        # Asks the scheduler to run this collector now, from any thread: a source that learns
        # of something between runs (an XID from the NVML event thread) is not left for its
        # interval. The scheduler sets it at start.
        self.wake: Callable[[], None] = lambda: None

    @abc.abstractmethod
    async def collect(self) -> CollectResult: ...

    async def close(self) -> None:
        """Release sessions, threads, file handles. Called once at shutdown."""
        return None


@dataclass(frozen=True)
class Hooks:
    """What a collector's factory may be given besides the Config: the process finder the
    process and cgroup collectors share, and the runtime's views of what the process
    collector found (GPU per-process memory, the ports Dynamo's processes listen on)."""

    finder: ProcessFinder
    dynamo_pids: Callable[[], dict[int, str]] | None = None
    listening_ports: Callable[[str], list[int]] | None = None


@dataclass(frozen=True)
class CollectorSpec:
    """A collector as the runtime builds it: `enabled` says whether the Config turns it on
    (its default is the Config's), `interval` how often it runs, `factory` builds it.
    `order` keeps the collectors' order (and so /status and the exposition) stable,
    whatever order their modules were imported in."""

    name: str
    order: int
    enabled: Callable[[Config], bool]
    interval: Callable[[Config], float]
    factory: Callable[[Config, Hooks], Collector]


REGISTRY: dict[str, CollectorSpec] = {}


def register(spec: CollectorSpec) -> CollectorSpec:
    """Add a collector to the registry (each collector module registers itself on import,
    as node_exporter's registerCollector does)."""
    if spec.name in REGISTRY:
        raise ValueError(f"collector {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


def registered() -> list[CollectorSpec]:
    return sorted(REGISTRY.values(), key=lambda spec: spec.order)
