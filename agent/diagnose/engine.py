"""Evaluates the rule catalogue over a Context and assembles the report: findings in their
life (active, past, resolved; agent/diagnose/lifecycle.py), causal links between the active
ones, causes before the symptoms folded under them, and the root-cause walk an operator
follows."""

from __future__ import annotations

import os
import time
from typing import Any

from agent import __version__
from agent.core import metrics as m
from agent.core.log import get as get_logger
from agent.core.samples import Sample
from agent.core.signals import CLIENT_ERROR_TYPES, bucket_text
from agent.core.state import counter_increase
from agent.diagnose.context import Context
from agent.diagnose.lifecycle import Lifecycle
from agent.diagnose.model import (
    SCHEMA_VERSION,
    SEVERITIES,
    SEVERITY_RANK,
    Evidence,
    Finding,
    Hit,
    Rule,
    duration_text,
    report_status,
)
from agent.diagnose.rules import RULES

log = get_logger("dynamo_sidecar.diagnose")


class RuleHealth:
    """Each rule's own health, as a Prometheus alerting rule has one: how many evaluations
    raised, and how long the last one took. One per sidecar (the rule records are shared);
    every evaluation through `evaluate(..., health=)` counts, the cycle's and /diagnose's."""

    def __init__(self, rules: tuple[Rule, ...] = RULES) -> None:
        # Every rule from the start: a counter that appears only on its first failure has no
        # zero for rate() to start from.
        self.failures: dict[str, int] = {rule.id: 0 for rule in rules}
        self.duration: dict[str, float] = {}
        # Every render asks for the samples, and evaluations are rarer: built once per change.
        self._samples: list[Sample] | None = None

    def observe(self, rule_id: str, seconds: float, failed: bool) -> None:
        self.duration[rule_id] = seconds
        if failed:
            self.failures[rule_id] = self.failures.get(rule_id, 0) + 1
        self._samples = None

    def samples(self) -> list[Sample]:
        if self._samples is None:
            out = [m.RULE_EVALUATION_FAILURES_TOTAL.sample(n, rule=r) for r, n in self.failures.items()]
            out.extend(m.RULE_EVALUATION_DURATION_SECONDS.sample(s, rule=r) for r, s in self.duration.items())
            self._samples = out
        return self._samples


def evaluate(
    ctx: Context,
    rules: tuple[Rule, ...] | None = None,
    lifecycle: Lifecycle | None = None,
    record: bool = True,
    health: RuleHealth | None = None,
) -> tuple[list[Finding], list[dict[str, str]]]:
    """Every rule over the context. With a lifecycle, each finding carries its episode's
    `since` and recently resolved findings follow as info (`record=False`: read the episodes,
    do not move them). Ordered causes first, each followed by what it explains."""
    rules = RULES if rules is None else rules
    overrides = ctx.config.thresholds
    findings: list[Finding] = []
    errors: list[dict[str, str]] = []
    for rule in rules:
        started = time.perf_counter()
        try:
            hits = rule.predicate(ctx, rule.limits(overrides))
        except Exception as exc:  # one broken rule must not hide the others
            if health is not None:
                health.observe(rule.id, time.perf_counter() - started, failed=True)
            errors.append({"rule": rule.id, "error": f"{type(exc).__name__}: {exc}"})
            log.warning("diagnose rule failed", rule=rule.id, error=repr(exc))
            continue
        if health is not None:
            health.observe(rule.id, time.perf_counter() - started, failed=False)
        for hit in hits:
            try:
                summary = rule.summary.format(subject=hit.subject, **hit.values)
            except (KeyError, ValueError, IndexError, AttributeError):
                summary = rule.summary
            findings.append(
                Finding(
                    id=f"{rule.id}:{hit.subject}",
                    rule=rule.id,
                    category=rule.category.value,
                    severity=hit.severity if hit.severity in SEVERITY_RANK else rule.severity.value,
                    summary=summary,
                    subject=hit.subject,
                    evidence=hit.evidence,
                    actions=[_fill(action, hit) for action in rule.actions_for(hit.role)],
                    since=min(hit.since, ctx.now),
                    role=hit.role,
                    last_event=hit.last_event,
                    model=hit.model,
                )
            )
    _settle_past_events(ctx, findings)
    _link(findings, {rule.id: rule for rule in rules})
    _attach_log_evidence(ctx, findings)
    if lifecycle is not None:
        findings = lifecycle.observe(findings, ctx.now, record=record, window=ctx.window)
    return order(findings), errors


def _settle_past_events(ctx: Context, findings: list[Finding]) -> None:
    """A finding about events in its window (restarts, failed requests, transitions) is
    information once the pod has served after the last of them: a request (or canary, of the
    finding's model when it names one) succeeded after it (Activity.served_after)."""
    for finding in findings:
        if not finding.last_event:
            continue
        served = ctx.activity.served_after(finding.last_event, finding.model)
        if served:
            finding.was, finding.severity, finding.state = finding.severity, "info", "past"
            finding.served_at = served


def _rank(finding: Finding) -> tuple[int, int, float]:
    """Present faults first (worst first, then the oldest), then past events, then what has
    resolved (the latest end first): a past event never outranks a present fault."""
    if finding.state == "resolved":
        return (2, 0, -finding.resolved_at)
    return (0 if finding.active else 1, -SEVERITY_RANK[finding.severity], finding.since)


def nest(findings: list[Finding]) -> list[tuple[Finding, list[Any]]]:
    """Causes first, each with the findings it explains nested under it (depth first, each
    level ranked); a symptom with two causes goes under the first of them."""
    by_id = {f.id: f for f in findings}
    placed: set[str] = set()

    def visit(finding: Finding) -> tuple[Finding, list[Any]]:
        placed.add(finding.id)
        children = []
        symptoms = [by_id[i] for i in finding.explains if i in by_id and i not in placed]
        for symptom in sorted(symptoms, key=_rank):
            if symptom.id not in placed:
                children.append(visit(symptom))
        return finding, children

    roots = [visit(f) for f in sorted(findings, key=_rank) if not f.explained_by and f.id not in placed]
    # A cycle of causes (a test forbids them) must still lose no finding.
    roots += [visit(f) for f in sorted(findings, key=_rank) if f.id not in placed]
    return roots


def order(findings: list[Finding]) -> list[Finding]:
    out: list[Finding] = []

    def flatten(nodes: list[tuple[Finding, list[Any]]]) -> None:
        for finding, children in nodes:
            out.append(finding)
            flatten(children)

    flatten(nest(findings))
    return out


def tree(findings: list[Finding]) -> list[dict[str, Any]]:
    """The nesting as data, for JSON and the renderers: [{id, symptoms: [...]}]."""

    def as_data(nodes: list[tuple[Finding, list[Any]]]) -> list[dict[str, Any]]:
        return [{"id": finding.id, "symptoms": as_data(children)} for finding, children in nodes]

    return as_data(nest(findings))


def _fill(template: str, hit: Hit) -> str:
    try:
        return template.format(subject=hit.subject, **hit.values)
    except (KeyError, ValueError, IndexError, AttributeError):
        return template


LOG_EVIDENCE_LEAD = 60.0  # error lines this long before a finding began are still its context


def _attach_log_evidence(ctx: Context, findings: list[Finding]) -> None:
    errors = ctx.logs.errors
    if errors is None:
        return
    for finding in findings:
        if finding.category == "sidecar" or not finding.active:
            continue
        for signature in errors.recent(since=finding.since - LOG_EVIDENCE_LEAD)[:3]:
            finding.evidence.append(
                Evidence(
                    f"log {signature.level} {signature.target}",
                    signature.message[:300],
                    timestamp=signature.last_seen,
                    note=f"seen {signature.count}x since {time.strftime('%H:%M:%S', time.gmtime(signature.first_seen))}Z",
                )
            )


def _explains(cause: Finding, link: str, effect: Finding) -> bool:
    rule, _, scope = link.partition(":")
    if effect.rule != rule:
        return False
    if scope == "*":
        return True
    if scope == "@role":
        return bool(cause.role) and effect.role == cause.role
    return effect.subject == cause.subject


def _link(findings: list[Finding], rules: dict[str, Rule]) -> None:
    """Fold symptoms under their cause. A cause takes the severity of its worst symptom: the
    reason a pod is critical is itself critical, whatever it would rank alone. Only findings
    that hold now are linked: a past event explains nothing and is explained by nothing."""
    findings = [f for f in findings if f.active]
    for cause in findings:
        for effect in findings:
            if effect is cause or effect.id in cause.explains:
                continue
            if any(_explains(cause, link, effect) for link in rules[cause.rule].explains):
                cause.explains.append(effect.id)
                effect.explained_by.append(cause.id)
    by_id = {f.id: f for f in findings}
    for effect in findings:
        causes = [by_id[c] for c in effect.explained_by]
        if causes and all(rules[c.rule].state for c in causes):
            effect.severity = "info"  # what start-up or a drain causes is expected
    for cause in findings:
        if rules[cause.rule].state:
            continue
        worst = max(
            (SEVERITY_RANK[by_id[e].severity] for e in cause.explains),
            default=SEVERITY_RANK[cause.severity],
        )
        if worst > SEVERITY_RANK[cause.severity] and not cause.explained_by:
            cause.severity = SEVERITIES[worst]


def unread(ctx: Context) -> list[dict[str, str]]:
    """What the sidecar could not read: collectors that have not completed a run yet, or
    whose last run failed (the latter are also `collector_failing` findings)."""
    out = []
    for name, status in sorted(ctx.state.collectors.items()):
        if status.last_success is None:
            out.append({"source": name, "error": "no run completed yet"})
        elif status.last_success is False:
            out.append({"source": name, "error": status.last_error or "its last run failed"})
    return out


def _errors_by_type(ctx: Context, window: float) -> tuple[dict[str, float], dict[str, float]]:
    """(server-side, client) failed requests by error type within the window."""
    server: dict[str, float] = {}
    client: dict[str, float] = {}
    for labels, ring in ctx.state.series_matching(ctx.names.requests_total, status="error"):
        points = ring.points(since=ctx.now - window, until=ctx.now)
        if len(points) < 2:
            continue
        increase = counter_increase(points)
        if increase > 0:
            error_type = dict(labels).get("error_type", "")
            into = client if error_type in CLIENT_ERROR_TYPES else server
            into[error_type] = into.get(error_type, 0.0) + increase
    return server, client


def _flow(ctx: Context, findings: list[Finding]) -> list[dict[str, Any]]:
    health = []
    for endpoint, view in sorted(ctx.health.endpoints.items()):
        for probe, result in sorted(view.probes.items()):
            health.append(
                f"{view.kind} {endpoint} {probe}: {result.outcome} (HTTP {result.status_code}, {result.status or '-'})"
            )
    signals = ctx.signals
    metrics = []
    if signals.request_rate is not None:
        metrics.append(f"requests {signals.request_rate:.2f}/s over the last {duration_text(signals.window)}")
        # Counts, split as request_failures splits them: the same failures are one number.
        server, client = _errors_by_type(ctx, signals.window)
        if server or client:
            parts = []
            if server:
                types = ", ".join(
                    f"{n:.0f} {k or 'unknown'}" for k, n in sorted(server.items(), key=lambda kv: -kv[1])
                )
                parts.append(f"{sum(server.values()):.0f} failed server-side ({types})")
            if client:
                types = ", ".join(
                    f"{n:.0f} {k or 'untyped'}" for k, n in sorted(client.items(), key=lambda kv: -kv[1])
                )
                parts.append(f"{sum(client.values()):.0f} refused as client errors ({types})")
            metrics.append("; ".join(parts) + f" in the last {duration_text(signals.window)}")
    if signals.inflight_total() is not None:
        metrics.append(f"in flight {signals.inflight_total():.0f}, queued {signals.queued or 0:.0f}")
    histograms = ctx.names.latency_histograms()
    for (name, quantile), value in sorted(signals.latency.items()):
        if quantile == 0.99:
            # Coarse buckets (request duration's first bucket is 0-2 s) say a range, not a value.
            buckets = ctx.state.window_buckets(histograms[name], signals.window, ctx.now)
            metrics.append(f"{name} p99 {bucket_text(value, buckets)}")
    primary = [f for f in findings if not f.explained_by and f.active and f.severity != "info"]
    return [
        {
            "step": "scope",
            "detail": "This report covers this pod only. `dynamo-sidecar diagnose --prometheus-url URL` evaluates the same rules over every pod's metrics and says whether a symptom is one pod, one node, or everywhere.",
        },
        {"step": "health endpoints", "observations": health or ["no Dynamo endpoint probed yet"]},
        {"step": "metrics and logs", "observations": metrics or ["no Dynamo metrics yet"]},
        {
            "step": "suspected cause",
            "observations": [f"{f.summary} [{f.id}]" for f in primary[:3]] or ["nothing abnormal"],
        },
        {
            "step": "verification",
            "observations": [f.actions[0] for f in primary[:3] if f.actions]
            or ["re-run diagnose after a change; findings clear within one collection interval"],
        },
    ]


def diagnose(
    ctx: Context,
    min_severity: str = "info",
    lifecycle: Lifecycle | None = None,
    record: bool = True,
    health: RuleHealth | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    findings, errors = evaluate(ctx, lifecycle=lifecycle, record=record, health=health)
    # The window narrows event-based rules (restarts, flapping); a condition that is true now
    # is reported whatever its age.
    findings = order([f for f in findings if SEVERITY_RANK[f.severity] >= SEVERITY_RANK[min_severity]])
    missing = unread(ctx)
    report = {
        "version": SCHEMA_VERSION,
        "generated_at": round(ctx.now, 3),
        # Nothing wrong in what could be read is not "ok" while a source has not been read.
        "status": report_status([f.severity for f in findings], bool(missing)),
        "window_seconds": ctx.window,
        "pod": {
            "name": os.environ.get("POD_NAME", os.environ.get("HOSTNAME", "")),
            "namespace": os.environ.get("POD_NAMESPACE", ""),
            "node": os.environ.get("NODE_NAME", ""),
        },
        "sidecar": {"version": __version__, "uptime_seconds": round(ctx.uptime, 3)},
        "findings": [f.to_dict() for f in findings],
        "tree": tree(findings),
        "flow": _flow(ctx, findings),
        "signals": ctx.signals.to_dict(),
        "rule_errors": errors,
        "unread": missing,
    }
    report["evaluation_seconds"] = round(time.perf_counter() - started, 6)
    return report
