"""The shapes of the diagnose report: rules as data plus a predicate, and findings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.diagnose.context import Context

SCHEMA_VERSION = 1
CATEGORIES = (
    "startup_failure",
    "performance_degradation",
    "connection_anomaly",
    "resource_pressure",
    "gpu_fault",
    "shutdown",
    "sidecar",
)
SEVERITIES = ("info", "warning", "critical")
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


@dataclass
class Evidence:
    signal: str  # the metric, probe or file the value comes from
    value: Any
    unit: str = ""
    timestamp: float = field(default_factory=time.time)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "signal": self.signal,
            "value": self.value,
            "timestamp": round(self.timestamp, 3),
        }
        if self.unit:
            out["unit"] = self.unit
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class Hit:
    """One match of a rule: what to fill the summary with and what shows it."""

    subject: str  # what the finding is about: an endpoint, a collector, a process
    values: dict[str, Any]
    evidence: list[Evidence]
    since: float


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    severity: str
    summary: str  # str.format template over Hit.values (and {subject})
    actions: tuple[str, ...]
    predicate: Callable[[Context], list[Hit]]
    explains: tuple[str, ...] = ()  # rule ids this one, when present, is the cause of


@dataclass
class Finding:
    id: str
    rule: str
    category: str
    severity: str
    summary: str
    subject: str
    evidence: list[Evidence]
    actions: list[str]
    since: float
    explained_by: list[str] = field(default_factory=list)
    explains: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "category": self.category,
            "severity": self.severity,
            "summary": self.summary,
            "subject": self.subject,
            "since": round(self.since, 3),
            "evidence": [e.to_dict() for e in self.evidence],
            "actions": list(self.actions),
            "explained_by": list(self.explained_by),
            "explains": list(self.explains),
        }
