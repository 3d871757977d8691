"""Shutdown: drains, what was cut by them, and Dynamo stopping on its own."""

from __future__ import annotations

from agent.core import metrics as m
from agent.core.facts import Outcome
from agent.diagnose.context import SHUTDOWN_STATUSES, Context
from agent.diagnose.model import (
    Alert,
    Category,
    Evidence,
    Hit,
    Limits,
    Rule,
    Severity,
    duration_text,
    registrar,
    who,
)
from agent.diagnose.rules.common import (
    _after_drain,
    _dependency_lost_before,
    _health_url,
    _probe_evidence,
    _probe_hits,
)

RULES: list[Rule] = []
rule = registrar(RULES)


@rule(
    id="dynamo_draining",
    category=Category.SHUTDOWN,
    severity=Severity.INFO,
    summary="{who} is shutting down (draining)",
    actions=(
        "Expected during a rollout or scale-down; new requests get 503 until the pod is gone.",
        "If the pod is not being terminated, check who sent SIGTERM (`kubectl get events`).",
    ),
    explains=(
        "canary_failing:*",
        "request_failures:*",
        "metrics_scrape_failing",
        "engine_hung:*",
        "frontend_no_instances:*",
    ),
    state=True,
)
def dynamo_draining(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for endpoint, view in ctx.health.endpoints.items():
        probe = view.probe()
        if (
            probe.status in SHUTDOWN_STATUSES
            or view.stage == "draining"
            or view.probe("live").status == "shutting_down"
        ) and _dependency_lost_before(ctx, probe.since or ctx.now) is None:
            kind = view.kind
            hits.append(
                Hit(
                    endpoint,
                    {"who": who(kind, endpoint)},
                    _probe_evidence(endpoint, "health", probe, _health_url(ctx, view)),
                    probe.since or ctx.now,
                    role=kind,
                )
            )
    return hits


@rule(
    id="dynamo_stopped_after_drain",
    category=Category.SHUTDOWN,
    severity=Severity.INFO,
    summary="{who} shut down after a drain {ago} ago: its port is closed, as expected during termination",
    actions=(
        "Expected while the pod terminates: Dynamo closes its port once in-flight work is done.",
        "If the pod is not terminating and this stays, the process exited after SIGTERM without being restarted: check `kubectl describe pod`.",
    ),
    explains=(
        "canary_failing:*",
        "request_failures:*",
        "metrics_scrape_failing",
        "port_not_listening:*",
        "engine_hung:*",
        "frontend_no_instances:*",
    ),
    state=True,
)
def dynamo_stopped_after_drain(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for hit in _probe_hits(ctx, {Outcome.REFUSED, Outcome.TIMEOUT}):
        drained = _after_drain(ctx, hit.subject, hit.since)
        if not drained:
            continue
        hit.values["ago"] = duration_text(ctx.now - drained)
        hit.evidence.append(Evidence("drain seen", "shutting down", timestamp=drained))
        hits.append(hit)
    return hits


@rule(
    id="drain_deadline_with_work",
    category=Category.SHUTDOWN,
    severity=Severity.CRITICAL,
    summary="drain reached its deadline after {duration:.0f}s with {inflight:.0f} request(s) still in flight: they were cut off",
    actions=(
        "Raise terminationGracePeriodSeconds (and the sidecar's termination_grace_period) above the longest request, or lower max_tokens for streaming clients.",
        "Enable request migration on the frontend (--migration-limit / DYN_MIGRATION_LIMIT) so cut streams continue on another worker.",
        "Check DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT (30 s): a worker forced out exits 911, which Kubernetes shows as 143.",
    ),
    fleet=lambda s, t: (
        s(m.DRAIN_INFLIGHT_AT_END.name)
        + " > 0 and on (namespace, pod) "
        + s(m.DRAIN_REASON.name, 'reason="deadline"')
        + " == 1"
    ),
    alert=Alert(
        "DynamoDrainCutOffRequests",
        "{{ $labels.namespace }}/{{ $labels.pod }} shut down with {{ $value }} requests still in flight",
    ),
)
def drain_deadline_with_work(ctx: Context, t: Limits) -> list[Hit]:
    summary = ctx.components.drain
    if summary is None or not summary.done or not summary.work_left:
        return []
    return [
        Hit(
            "drain",
            {"inflight": summary.inflight_at_end, "duration": summary.duration},
            [
                Evidence(m.DRAIN_INFLIGHT_AT_END.name, summary.inflight_at_end, timestamp=summary.ended_at),
                Evidence(m.DRAIN_DURATION_SECONDS.name, round(summary.duration, 3), unit="seconds"),
                Evidence(m.DRAIN_REASON.selector(reason=summary.reason), 1),
                Evidence(m.DRAIN_REQUESTS_FAILED.name, summary.requests_failed),
            ],
            summary.started_at,
        )
    ]
