"""The shapes of the diagnose report: one record per rule (metadata, named thresholds, the pod
predicate, the fleet PromQL and the alert, declared together) and the findings it yields.

Pod view (`/diagnose`), fleet view (`diagnose --prometheus-url`) and Prometheus alerts are all
read from the same record, so they cannot disagree on a threshold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.diagnose.context import Context

SCHEMA_VERSION = 1


class Category(StrEnum):
    """What a rule is about. A StrEnum: it compares, hashes, formats and JSON-encodes as its
    value. yaml.safe_dump refuses enums, so findings and alert labels take `.value`."""

    STARTUP_FAILURE = "startup_failure"
    PERFORMANCE_DEGRADATION = "performance_degradation"
    CONNECTION_ANOMALY = "connection_anomaly"
    RESOURCE_PRESSURE = "resource_pressure"
    GPU_FAULT = "gpu_fault"
    SHUTDOWN = "shutdown"
    SIDECAR = "sidecar"


class Severity(StrEnum):
    """A rule's grade, lowest first (SEVERITY_RANK orders them)."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class RuleError(ValueError):
    """A rule record that breaks the registry's invariants: raised at import, naming the rule."""


CATEGORIES = tuple(c.value for c in Category)
SEVERITIES = tuple(s.value for s in Severity)
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
ROLES = ("frontend", "worker", "non-leader")


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
    since: float  # when the condition began, not when the sidecar noticed it
    role: str = (
        ""  # "frontend" | "worker" | "non-leader" | "": picks role-specific actions, matches `@role` links
    )
    # For a finding about events in a window (restarts, failed requests, transitions): when
    # the last of them happened. Once the pod has served since then, the finding is a past
    # event (info). 0: the condition holds now, whatever the pod serves.
    last_event: float = 0.0
    model: str = ""  # the model the events concern, when it is one (a canary): "served" means that model
    # This hit's grade when it differs from the rule's (a worker lost while others of the
    # pod still serve is graded by the capacity lost); "" keeps the rule's severity.
    severity: str = ""


@dataclass(frozen=True)
class Threshold:
    """A named, overridable limit of one rule (config key `thresholds: {rule.name: value}`)."""

    name: str
    default: float
    unit: str
    help: str
    # Why the fleet query (and so the alert) cannot apply this threshold; empty when it does.
    pod_only: str = ""


class Limits(dict[str, float]):
    """A rule's thresholds in effect, read as attributes: `t.ratio`. `overrides` holds every
    rule's overrides, for a rule whose condition is bounded by another's thresholds."""

    overrides: dict[str, float]

    def __getattr__(self, name: str) -> float:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


Selector = Callable[..., str]  # sel(metric, 'label="x"') -> metric{label="x",namespace="ns"}
FleetQuery = Callable[[Selector, Limits], str]


@dataclass(frozen=True)
class Alert:
    """The Prometheus alert generated from a rule: its expression is the rule's fleet query."""

    name: str
    summary: str  # annotation template; may use {{ $labels.x }} and {{ $value }}
    for_: str = ""


@dataclass(frozen=True)
class NoAlert:
    """Why a rule has no Prometheus alert (docs/rules.md and `alerts` list it): a critical rule
    either pages or says why it cannot."""

    reason: str


@dataclass(frozen=True, kw_only=True)
class Rule:
    id: str
    category: Category
    severity: Severity
    summary: str  # str.format template over Hit.values (and {subject})
    # Most likely first. "frontend: ..." / "worker: ..." apply only to hits of that role.
    actions: tuple[str, ...]
    predicate: Callable[[Context, Limits], list[Hit]]
    # Findings this one, when present, is the cause of: "rule" (same subject), "rule:*" (any
    # subject), "rule:@role" (a subject of the same role as this hit's).
    explains: tuple[str, ...] = ()
    thresholds: tuple[Threshold, ...] = ()
    fleet: FleetQuery | None = None  # PromQL returning one series per affected pod
    alert: Alert | NoAlert | None = None
    # A state, not a fault (start-up, a drain): what it explains is info, never critical.
    state: bool = False
    # About events in a window (restarts, failed requests, transitions): its hits say when
    # the last one happened (Hit.last_event), and once the pod serves after that the finding
    # is a past event (info).
    events: bool = False

    def limits(self, overrides: dict[str, float] | None = None) -> Limits:
        out = Limits({t.name: t.default for t in self.thresholds})
        out.overrides = dict(overrides or {})
        for key, value in (overrides or {}).items():
            rule_id, _, name = key.partition(".")
            if rule_id == self.id and name in out:
                out[name] = value
        return out

    def actions_for(self, role: str) -> list[str]:
        out = []
        for action in self.actions:
            prefix, sep, rest = action.partition(": ")
            if sep and prefix in ROLES:
                # Without a role a hit shows every role's advice, except the non-leader's:
                # that applies only in a pod the sidecar knows to be a multinode non-leader.
                if prefix == role or (not role and prefix != "non-leader"):
                    out.append(rest if prefix == role else action)
            else:
                out.append(action)
        return out


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
    role: str = ""
    explained_by: list[str] = field(default_factory=list)
    explains: list[str] = field(default_factory=list)
    # Where the finding is in its life (agent/diagnose/lifecycle.py): "active" (the condition
    # holds), "past" (events in the window, and the pod has served since the last of them) or
    # "resolved" (the condition no longer holds). Past and resolved findings are info.
    state: str = "active"
    was: str = ""  # past or resolved: the severity it had while active
    last_event: float = 0.0  # from the hit: when the last event of a windowed finding happened
    model: str = ""
    served_at: float = 0.0  # past: when the pod last served (after the last event)
    resolved_at: float = 0.0  # resolved: the first evaluation at which the condition no longer held

    @property
    def active(self) -> bool:
        return self.state == "active"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "rule": self.rule,
            "category": self.category,
            "severity": self.severity,
            "state": self.state,
            "summary": self.summary,
            "subject": self.subject,
            "since": round(self.since, 3),
            "evidence": [e.to_dict() for e in self.evidence],
            "actions": list(self.actions),
            "explained_by": list(self.explained_by),
            "explains": list(self.explains),
        }
        if self.last_event:
            out["last_event_at"] = round(self.last_event, 3)
        if self.state != "active":
            out["was"] = self.was
        if self.state == "past":
            out["served_at"] = round(self.served_at, 3)
        if self.state == "resolved":
            out["resolved_at"] = round(self.resolved_at, 3)
            out["duration_seconds"] = round(max(0.0, self.resolved_at - self.since), 3)
        return out


def report_status(severities: list[str], unread: bool) -> str:
    """One rule for every reader: the worst finding; with nothing at warning or above, "unknown"
    when something that was to be read could not be (never "ok" for a check not made)."""
    worst = max((SEVERITY_RANK[s] for s in severities), default=0)
    if worst == 0 and unread:
        return "unknown"
    return SEVERITIES[worst] if worst else "ok"


def who(kind: str, subject: str) -> str:
    """'worker' rather than 'worker worker'; 'worker worker-1' when they differ."""
    return kind if not subject or subject == kind else f"{kind} {subject}".strip()


def duration_text(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def registrar(into: list[Rule]) -> Callable[..., Callable[[Callable[[Context, Limits], list[Hit]]], Any]]:
    """`@rule(id=..., category=..., severity=..., summary=..., actions=..., ...)` over a
    predicate: the record and its predicate stand together, and the record is appended to
    `into`. Every field is keyword-only: a record of eleven fields is read by name."""

    def rule(
        *,
        id: str,
        category: Category,
        severity: Severity,
        summary: str,
        actions: tuple[str, ...],
        explains: tuple[str, ...] = (),
        thresholds: tuple[Threshold, ...] = (),
        fleet: FleetQuery | None = None,
        alert: Alert | NoAlert | None = None,
        state: bool = False,
        events: bool = False,
    ) -> Callable[[Callable[[Context, Limits], list[Hit]]], Callable[[Context, Limits], list[Hit]]]:
        # Checked by exception, not assert: `python -O` must not let a malformed rule through.
        if not isinstance(category, Category) or not isinstance(severity, Severity):
            raise RuleError(f"{id}: category and severity are a Category and a Severity")
        # A critical finding pages, or its record says why it cannot (docs/rules.md lists both).
        if severity is Severity.CRITICAL and alert is None:
            raise RuleError(f"{id}: a critical rule needs an Alert or NoAlert")
        if isinstance(alert, Alert) and fleet is None:
            raise RuleError(f"{id}: an alert is its fleet query")
        if any(r.id == id for r in into):
            raise RuleError(f"{id}: two rules with one id")

        def wrap(predicate: Callable[[Context, Limits], list[Hit]]) -> Callable[[Context, Limits], list[Hit]]:
            into.append(
                Rule(
                    id=id,
                    category=category,
                    severity=severity,
                    summary=summary,
                    actions=actions,
                    predicate=predicate,
                    explains=explains,
                    thresholds=thresholds,
                    fleet=fleet,
                    alert=alert,
                    state=state,
                    events=events,
                )
            )
            return predicate

        return wrap

    return rule
