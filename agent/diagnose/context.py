"""What a rule may look at: the state (latest samples, history, events, collector status),
the config and the derived signals. Nothing here touches the network."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agent.config import Config
from agent.facts import (
    EndpointFacts,
    GpuFacts,
    HealthFacts,
    LogFacts,
    MetricsFacts,
    ProbeFact,
    ProcessFacts,
    TcpFacts,
)
from agent.signals import DynamoNames, Signals
from agent.state import State

# Statuses Dynamo answers while it shuts down (frontend /health, /live).
SHUTDOWN_STATUSES = {"not_ready", "shutting_down"}


@dataclass
class Context:
    state: State
    config: Config
    signals: Signals
    now: float = field(default_factory=time.time)
    window: float = 900.0  # ?since= narrows what "recent" means
    names: DynamoNames = field(default_factory=DynamoNames)
    draining: bool = False  # the sidecar itself is draining (SIGTERM / POST /drain)

    @property
    def uptime(self) -> float:
        return self.now - self.state.started

    @property
    def in_startup_grace(self) -> bool:
        return self.uptime < self.config.startup_grace

    # --- typed facts, one per source (agent/facts.py); empty before a source's first run ----
    @property
    def health(self) -> HealthFacts:
        return self.state.facts("dynamo_health", HealthFacts)

    @property
    def scrapes(self) -> MetricsFacts:
        return self.state.facts("dynamo_metrics", MetricsFacts)

    @property
    def processes(self) -> ProcessFacts:
        return self.state.facts("process", ProcessFacts)

    @property
    def tcp(self) -> TcpFacts:
        return self.state.facts("tcp", TcpFacts)

    @property
    def gpus(self) -> GpuFacts:
        return self.state.facts("gpu", GpuFacts)

    @property
    def logs(self) -> LogFacts:
        return self.state.facts("dynamo_logs", LogFacts)

    def health_endpoints(self) -> dict[str, EndpointFacts]:
        return self.health.endpoints

    def probe(self, endpoint: str, probe: str = "health") -> ProbeFact:
        view = self.health.endpoints.get(endpoint)
        return view.probe(probe) if view is not None else ProbeFact()

    def events(self, kind: str | None = None) -> list[Any]:
        return self.state.recent_events(since=self.now - self.window, kind=kind)

    def extra(self, key: str) -> Any:
        return self.state.extra.get(key)

    # --- states that are not faults ---------------------------------------------------------
    def starting(self, endpoint: str) -> bool:
        """Dynamo's start-up: this endpoint has never answered, and the grace has not passed."""
        view = self.health.endpoints.get(endpoint)
        return self.in_startup_grace and not (view is not None and view.first_ok_at)

    def any_starting(self) -> bool:
        return self.in_startup_grace and not any(view.first_ok_at for view in self.health.endpoints.values())

    def drain_seen(self, endpoint: str, until: float | None = None) -> float:
        """When Dynamo (this endpoint) was last seen shutting down, or the sidecar itself
        began draining; 0 if neither happened in the window. With `until`, only signs seen
        by then count: Dynamo logs shutdown lines again as its process exits, after the
        port it drained has closed, and those late lines are not a new drain."""
        until = self.now if until is None else until
        seen = 0.0
        drain = self.extra("drain")
        if drain is not None and drain.started_at <= until:
            seen = drain.started_at
        for event in self.events("health_transition"):
            attributes = event.attributes
            if (
                attributes.get("endpoint") == endpoint
                and attributes.get("to_status") in SHUTDOWN_STATUSES
                and event.timestamp <= until
            ):
                seen = max(seen, event.timestamp)
        for event in self.events("dynamo_shutdown"):  # Dynamo logged that it got SIGTERM
            if event.timestamp <= until:
                seen = max(seen, event.timestamp)
        view = self.health.endpoints.get(endpoint)
        if view is not None and view.stage == "draining":
            seen = max(seen, min(self.now, until))
        return seen
