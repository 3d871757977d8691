"""The sidecar's own moving parts as the rest of it sees them: whether it is ready or
draining (RunState), and the typed status of its canary, drain and OTLP exporter that rules
read (Components). A low module: the diagnose layer reads these shapes without importing
agent.runtime.canary, agent.runtime.drain, exporters.otlp or agent.runtime.sidecar."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class RunState:
    """Owns `draining` and `ready`: the drain sets one, the server and exporter read both.
    Ready once the first collection cycle has run (`first_cycle_done`), and not draining."""

    def __init__(self, first_cycle_done: asyncio.Event) -> None:
        self.first_cycle_done = first_cycle_done
        self.draining = False

    @property
    def ready(self) -> bool:
        return self.first_cycle_done.is_set() and not self.draining


class CanaryOutcome(Protocol):
    """One canary request's result (agent.runtime.canary.CanaryResult)."""

    @property
    def outcome(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def traceparent(self) -> str: ...
    @property
    def latency(self) -> float: ...
    @property
    def status(self) -> int: ...
    @property
    def error(self) -> str: ...
    @property
    def body_excerpt(self) -> str: ...
    @property
    def timestamp(self) -> float: ...


class ModelRecord(Protocol):
    """One model's canary record (agent.runtime.canary.ModelState)."""

    @property
    def consecutive_failures(self) -> int: ...
    @property
    def last_success(self) -> float: ...
    @property
    def failing_since(self) -> float: ...
    @property
    def failing(self) -> bool: ...
    @property
    def last(self) -> CanaryOutcome | None: ...


class CanaryView(Protocol):
    @property
    def models(self) -> Mapping[str, ModelRecord]: ...


class DrainRecord(Protocol):
    """The drain's record (agent.runtime.drain.DrainSummary)."""

    @property
    def started_at(self) -> float: ...
    @property
    def ended_at(self) -> float: ...
    @property
    def reason(self) -> str: ...
    @property
    def inflight_at_end(self) -> float | None: ...
    @property
    def requests_failed(self) -> float: ...
    @property
    def duration(self) -> float: ...
    @property
    def done(self) -> bool: ...
    @property
    def work_left(self) -> bool: ...


class TelemetryView(Protocol):
    """The OTLP exporter (exporters.otlp.Telemetry)."""

    @property
    def enabled(self) -> bool: ...
    def status(self) -> dict[str, Any]: ...


@dataclass
class Components:
    """What the rules may know of the sidecar's own parts; None when a part is absent (no
    drain started, no canary, no exporter)."""

    drain: DrainRecord | None = None
    canary: CanaryView | None = None
    otlp: TelemetryView | None = None
