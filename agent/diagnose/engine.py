"""Evaluates the rule catalogue over a Context and assembles the report: findings sorted by
severity, causal links between them, and the root-cause walk an operator follows."""

from __future__ import annotations

import os
import time
from typing import Any

from agent import __version__
from agent.diagnose.context import Context
from agent.diagnose.model import SCHEMA_VERSION, SEVERITIES, SEVERITY_RANK, Evidence, Finding, Hit, Rule
from agent.diagnose.rules import RULES as BASE_RULES
from agent.diagnose.rules_system import SYSTEM_RULES
from agent.log import get as get_logger
from agent.signals import bucket_text

log = get_logger("dynamo_sidecar.diagnose")
RULES: tuple[Rule, ...] = (*BASE_RULES, *SYSTEM_RULES)


def evaluate(
    ctx: Context, rules: tuple[Rule, ...] | None = None
) -> tuple[list[Finding], list[dict[str, str]]]:
    rules = RULES if rules is None else rules
    overrides = ctx.config.thresholds
    findings: list[Finding] = []
    errors: list[dict[str, str]] = []
    for rule in rules:
        try:
            hits = rule.predicate(ctx, rule.limits(overrides))
        except Exception as exc:  # one broken rule must not hide the others
            errors.append({"rule": rule.id, "error": f"{type(exc).__name__}: {exc}"})
            log.warning("diagnose rule failed", rule=rule.id, error=repr(exc))
            continue
        for hit in hits:
            try:
                summary = rule.summary.format(subject=hit.subject, **hit.values)
            except (KeyError, ValueError, IndexError, AttributeError):
                summary = rule.summary
            findings.append(
                Finding(
                    id=f"{rule.id}:{hit.subject}",
                    rule=rule.id,
                    category=rule.category,
                    severity=hit.severity if hit.severity in SEVERITY_RANK else rule.severity,
                    summary=summary,
                    subject=hit.subject,
                    evidence=hit.evidence,
                    actions=[_fill(action, hit) for action in rule.actions_for(hit.role)],
                    since=min(hit.since, ctx.now),
                    role=hit.role,
                )
            )
    _link(findings, {rule.id: rule for rule in rules})
    _attach_log_evidence(ctx, findings)
    findings.sort(key=lambda f: (bool(f.explained_by), -SEVERITY_RANK[f.severity], f.since))
    return findings, errors


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
        if finding.category == "sidecar":
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
    reason a pod is critical is itself critical, whatever it would rank alone."""
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


def _status(findings: list[Finding]) -> str:
    worst = max((SEVERITY_RANK[f.severity] for f in findings), default=0)
    return {0: "ok", 1: "warning", 2: "critical"}[worst]


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
        metrics.append(
            f"requests {signals.request_rate:.2f}/s, errors {signals.error_rate or 0:.2f}/s over {signals.window:.0f}s"
        )
    if signals.inflight_total() is not None:
        metrics.append(f"in flight {signals.inflight_total():.0f}, queued {signals.queued or 0:.0f}")
    histograms = ctx.names.latency_histograms()
    for (name, quantile), value in sorted(signals.latency.items()):
        if quantile == 0.99:
            # Coarse buckets (request duration's first bucket is 0-2 s) say a range, not a value.
            buckets = ctx.state.window_buckets(histograms[name], signals.window, ctx.now)
            metrics.append(f"{name} p99 {bucket_text(value, buckets)}")
    primary = [f for f in findings if not f.explained_by and f.severity != "info"]
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


def diagnose(ctx: Context, min_severity: str = "info") -> dict[str, Any]:
    started = time.perf_counter()
    findings, errors = evaluate(ctx)
    # The window narrows event-based rules (restarts, flapping); a condition that is true now
    # is reported whatever its age.
    findings = [f for f in findings if SEVERITY_RANK[f.severity] >= SEVERITY_RANK[min_severity]]
    report = {
        "version": SCHEMA_VERSION,
        "generated_at": round(ctx.now, 3),
        "status": _status(findings),
        "window_seconds": ctx.window,
        "pod": {
            "name": os.environ.get("POD_NAME", os.environ.get("HOSTNAME", "")),
            "namespace": os.environ.get("POD_NAMESPACE", ""),
            "node": os.environ.get("NODE_NAME", ""),
        },
        "sidecar": {"version": __version__, "uptime_seconds": round(ctx.uptime, 3)},
        "findings": [f.to_dict() for f in findings],
        "flow": _flow(ctx, findings),
        "signals": ctx.signals.to_dict(),
        "rule_errors": errors,
    }
    report["evaluation_seconds"] = round(time.perf_counter() - started, 6)
    return report
