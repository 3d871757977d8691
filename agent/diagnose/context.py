"""What a rule may look at: the state (latest samples, history, events, collector status),
the config and the derived signals. Nothing here touches the network."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from agent.core.components import Components
from agent.core.facts import (
    EndpointFacts,
    GpuFacts,
    HealthFacts,
    LogFacts,
    MetricsFacts,
    Outcome,
    ProbeFact,
    ProcessFacts,
    TcpFacts,
)
from agent.core.samples import Labels
from agent.core.signals import CLIENT_ERROR_TYPES, DynamoNames, Signals
from agent.core.state import SeriesRing, State

if TYPE_CHECKING:  # the settings sit above the rules (they validate rule thresholds)
    from agent.config import Config

# Statuses Dynamo answers while it shuts down (frontend /health, /live).
SHUTDOWN_STATUSES = {"not_ready", "shutting_down"}


def first_rise(points: list[tuple[float, float]]) -> float:
    """When a counter first moved within the points (a reset counts); 0 if it never did."""
    for (_, before), (at, after) in pairwise(points):
        if after != before:
            return at
    return 0.0


def last_rise(points: list[tuple[float, float]]) -> float:
    """When a counter last moved within the points; 0 if it never did."""
    for index in range(len(points) - 1, 0, -1):
        if points[index][1] != points[index - 1][1]:
            return points[index][0]
    return 0.0


def rises(
    series: Iterable[tuple[Labels, SeriesRing]],
    since: float,
    until: float,
    keep: Callable[[dict[str, str]], bool] = lambda labels: True,
) -> tuple[float, float]:
    """(first, last) time any of the kept counters moved in (since, until]; 0s when none did."""
    first, last = 0.0, 0.0
    for labels, ring in series:
        if not keep(dict(labels)):
            continue
        points = ring.points(since=since, until=until)
        began, ended = first_rise(points), last_rise(points)
        if began:
            first = min(first, began) if first else began
            last = max(last, ended)
    return first, last


@dataclass(frozen=True)
class Activity:
    """What the pod served lately, from Dynamo's counters and the canary: the facts behind
    "the pod serves again" (a past event is information once it does)."""

    success: dict[str, float]  # model ("" = any model) -> last time a request succeeded
    failure: dict[str, float] = field(default_factory=dict)  # the same for server-side failures
    watched: float = 0.0  # the latest collection of the request counters
    health_ok: bool = False  # every probed Dynamo endpoint answers its health check ok now

    def served_after(self, when: float, model: str = "") -> float:
        """When the pod last served a request successfully (of `model`, when given), if that
        was after `when`; 0 otherwise. Once true it stays true for that event: a later fault
        is a new event of its own finding (its failures, its transitions), not this one's.

        Counters cannot order what happened within one collection step: successes counted in
        the same step as the last failure (the first request after a restart fails, the next
        five succeed) count as after it once a later collection saw no further failure and
        every endpoint is healthy now."""
        success = self.success.get(model, 0.0)  # "" holds the latest of any model
        if success > when:
            return success
        failure = self.failure.get(model, 0.0)
        if success and success == when and failure <= when < self.watched and self.health_ok:
            return success
        return 0.0


@dataclass
class Context:
    state: State
    config: Config
    signals: Signals
    now: float = field(default_factory=time.time)
    window: float = 900.0  # ?since= narrows what "recent" means
    names: DynamoNames = field(default_factory=DynamoNames)
    draining: bool = False  # the sidecar itself is draining (SIGTERM / POST /drain)
    components: Components = field(default_factory=Components)  # canary, drain, OTLP status

    @property
    def uptime(self) -> float:
        return self.now - self.state.started

    @property
    def in_startup_grace(self) -> bool:
        return self.uptime < self.config.startup_grace

    # --- typed facts, one per source (agent/core/facts.py); empty before a source's first run ----
    @property
    def health(self) -> HealthFacts:
        return self.state.facts(HealthFacts)

    @property
    def scrapes(self) -> MetricsFacts:
        return self.state.facts(MetricsFacts)

    @property
    def processes(self) -> ProcessFacts:
        return self.state.facts(ProcessFacts)

    @property
    def tcp(self) -> TcpFacts:
        return self.state.facts(TcpFacts)

    @property
    def gpus(self) -> GpuFacts:
        return self.state.facts(GpuFacts)

    @property
    def logs(self) -> LogFacts:
        return self.state.facts(LogFacts)

    def health_endpoints(self) -> dict[str, EndpointFacts]:
        return self.health.endpoints

    def probe(self, endpoint: str, probe: str = "health") -> ProbeFact:
        view = self.health.endpoints.get(endpoint)
        return view.probe(probe) if view is not None else ProbeFact()

    @functools.cached_property
    def activity(self) -> Activity:
        success: dict[str, float] = {}
        failure: dict[str, float] = {}
        watched = 0.0

        def note(into: dict[str, float], model: str, when: float) -> None:
            if when:
                into[model] = max(into.get(model, 0.0), when)
                into[""] = max(into.get("", 0.0), when)

        since = self.now - self.window
        for labels, ring in self.state.series_matching(self.names.requests_total):
            label = dict(labels)
            points = ring.points(since=since, until=self.now)
            if points:
                watched = max(watched, points[-1][0])
            if label.get("status") == "success":
                note(success, label.get("model", ""), last_rise(points))
            elif label.get("status") == "error" and label.get("error_type", "") not in CLIENT_ERROR_TYPES:
                note(failure, label.get("model", ""), last_rise(points))
        # A worker pod sees no frontend counters: its own finished requests are what it served.
        for _, ring in self.state.series_matching(self.names.worker_requests_total):
            note(success, "", last_rise(ring.points(since=since, until=self.now)))
        canary = self.components.canary
        for model, state in (canary.models if canary is not None else {}).items():
            note(success, model, state.last_success)
        health_ok = bool(self.health.endpoints) and all(
            view.probe().outcome == Outcome.OK for view in self.health.endpoints.values()
        )
        return Activity(success, failure, watched, health_ok)

    def events(self, kind: str | None = None) -> list[Any]:
        return self.state.recent_events(since=self.now - self.window, kind=kind)

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
        drain = self.components.drain
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
