"""The sidecar itself: its collectors, its exports and its own memory."""

from __future__ import annotations

from agent.core import metrics as m
from agent.diagnose.context import Context
from agent.diagnose.model import (
    Alert,
    Category,
    Evidence,
    Hit,
    Limits,
    Rule,
    Severity,
    Threshold,
    registrar,
)

RULES: list[Rule] = []
rule = registrar(RULES)


@rule(
    id="collector_failing",
    category=Category.SIDECAR,
    severity=Severity.WARNING,
    summary="collector {subject} is failing ({failures} runs in a row): {error}",
    actions=(
        "The signals this collector provides are stale; the rest of the sidecar keeps working.",
        "See the error in the evidence; `dynamo-sidecar check-config` shows the settings it uses.",
    ),
    fleet=lambda s, t: s(m.COLLECTOR_SUCCESS.name) + " == 0",
    alert=Alert(
        "DynamoSidecarCollectorFailing",
        "dynamo-sidecar collector {{ $labels.collector }} failing on {{ $labels.namespace }}/{{ $labels.pod }}",
        "5m",
    ),
)
def collector_failing(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for status in ctx.state.collectors.values():
        if status.last_success is False:
            hits.append(
                Hit(
                    status.name,
                    {"failures": status.consecutive_failures, "error": status.last_error},
                    [
                        Evidence(
                            m.COLLECTOR_SUCCESS.selector(collector=status.name),
                            0,
                            timestamp=status.last_run_time,
                        ),
                        Evidence("consecutive failures", status.consecutive_failures),
                        Evidence("last error", status.last_error),
                        Evidence(
                            m.COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS.selector(collector=status.name),
                            status.last_success_time or None,
                            unit="unix seconds",
                        ),
                    ],
                    status.first_failure_time or ctx.now,
                )
            )
    return hits


@rule(
    id="series_dropped",
    category=Category.SIDECAR,
    severity=Severity.INFO,
    summary="series over a cardinality cap are being dropped ({caps}; most: {metrics})",
    actions=(
        "A source is inventing series or names: find it in the evidence and deny the family with passthrough_deny.",
        "If the series are wanted, raise max_series_per_metric, max_metric_names or max_series.",
    ),
    fleet=lambda s, t: "increase(" + s(m.SERIES_CAPS_HIT_TOTAL.name) + "[15m]) > 0",
)
def series_dropped(ctx: Context, t: Limits) -> list[Hit]:
    if not ctx.state.dropped:
        return []
    worst = sorted(ctx.state.dropped.items(), key=lambda kv: -kv[1])[:5]
    caps = ", ".join(f"{cap} cap {n}x" for cap, n in sorted(ctx.state.caps_hit.items()))
    return [
        Hit(
            "cardinality",
            {"metrics": ", ".join(name for name, _ in worst), "caps": caps or "cap"},
            [
                *[Evidence(m.SERIES_DROPPED_TOTAL.selector(metric=name), count) for name, count in worst],
                *[
                    Evidence(m.SERIES_CAPS_HIT_TOTAL.selector(cap=cap), n)
                    for cap, n in sorted(ctx.state.caps_hit.items())
                ],
            ],
            ctx.now,
        )
    ]


@rule(
    id="memory_budget",
    category=Category.SIDECAR,
    severity=Severity.WARNING,
    summary="the sidecar's series and history use {percent}% of their memory budget ({used} of {budget} bytes){kept_out}",
    actions=(
        "A source is flooding series: find it with series_dropped and deny the family with passthrough_deny.",
        "If the series are wanted, raise the sidecar container's memory limit (the budget is a quarter of it) or memory_budget.",
    ),
    thresholds=(Threshold("ratio", 0.8, "ratio", "Share of memory_budget in use that makes a finding."),),
    fleet=lambda s, t: (
        s(m.MEMORY_BUDGET_USED_BYTES.name)
        + f" >= {t.ratio:g} * "
        + s(m.MEMORY_BUDGET_BYTES.name)
        + " and "
        + s(m.MEMORY_BUDGET_BYTES.name)
        + " > 0"
    ),
)
def memory_budget(ctx: Context, t: Limits) -> list[Hit]:
    """Before the container's limit: the state's memory (series, and kept rings counted at
    their full size) near its budget, or series or history already kept out by it."""
    state = ctx.state
    budget = state.memory_budget
    if not budget:
        return []
    used = state.budget_used()
    refused = state.caps_hit.get("memory_budget", 0)
    if used < t.ratio * budget and not refused and not state.history_refused:
        return []
    kept_out = []
    if refused:
        kept_out.append(f"{refused} series dropped")
    if state.history_refused:
        kept_out.append(f"{state.history_refused} series without history")
    return [
        Hit(
            "state",
            {
                "percent": round(100 * used / budget),
                "used": used,
                "budget": budget,
                "kept_out": "; " + ", ".join(kept_out) if kept_out else "",
            },
            [
                Evidence(m.MEMORY_BUDGET_USED_BYTES.name, used, unit="bytes"),
                Evidence(m.MEMORY_BUDGET_BYTES.name, budget, unit="bytes"),
                Evidence(
                    "container memory limit",
                    state.memory_limit,
                    unit="bytes",
                    note="" if state.memory_limit else "unknown: the budget is memory_budget or 128Mi",
                ),
                Evidence(m.HISTORY_BYTES.name, state.history_bytes, unit="bytes"),
                Evidence(m.HISTORY_SERIES.name, state.history_kept),
                Evidence(m.HISTORY_REFUSED_TOTAL.name, state.history_refused),
                Evidence(m.SERIES_CAPS_HIT_TOTAL.selector(cap="memory_budget"), refused),
            ],
            ctx.now,
        )
    ]


@rule(
    id="otlp_export_failing",
    category=Category.SIDECAR,
    severity=Severity.WARNING,
    summary="traces cannot be exported to {subject} ({dropped} spans dropped)",
    actions=(
        "Check the OTLP receiver (the OpenTelemetry Collector) is running and reachable at OTEL_EXPORTER_OTLP_ENDPOINT from this pod.",
        "Check OTEL_EXPORTER_OTLP_PROTOCOL matches the port: 4317 is gRPC, 4318 is http/protobuf.",
    ),
    fleet=lambda s, t: "increase(" + s(m.OTLP_SPANS_DROPPED_TOTAL.name) + "[15m]) > 0",
)
def otlp_export_failing(ctx: Context, t: Limits) -> list[Hit]:
    telemetry = ctx.components.otlp
    if telemetry is None:
        return []
    status = telemetry.status()
    if status["error"]:  # configured, but the exporter could not be built (a TLS file, say)
        return [
            Hit(
                status["endpoint"] or "the OTLP receiver",
                {"dropped": "all"},
                [
                    Evidence("OTLP exporter not started", status["error"]),
                    Evidence("OTLP endpoint", f"{status['endpoint']} ({status['protocol']})"),
                ],
                ctx.state.started,
            )
        ]
    if not telemetry.enabled:
        return []
    dropped = sum(status["dropped"].values())
    recent_success = status["last_success"] and ctx.now - status["last_success"] < 60
    if not status["failures"] and not status["dropped"].get("queue_full"):
        return []
    if recent_success and not status["dropped"].get("queue_full"):
        return []
    return [
        Hit(
            status["endpoint"],
            {"dropped": dropped},
            [
                Evidence(m.OTLP_EXPORT_FAILURES_TOTAL.name, status["failures"]),
                Evidence(m.OTLP_SPANS_DROPPED_TOTAL.name, status["dropped"]),
                Evidence("last export error", status["last_error"]),
                Evidence("OTLP endpoint", f"{status['endpoint']} ({status['protocol']})"),
            ],
            ctx.now,
        )
    ]
