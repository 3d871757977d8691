"""The rule catalogue. Each rule is data (id, category, severity, summary, actions) plus a
small predicate over the Context that returns the hits. Rules never read the network."""

from __future__ import annotations

from typing import Any

from agent.diagnose.context import Context
from agent.diagnose.model import Evidence, Hit, Rule

PREFIX = "dynamo_sidecar_"


def _probe_evidence(endpoint: str, probe: str, view: dict[str, Any], url: str) -> list[Evidence]:
    evidence = [
        Evidence(
            f"{PREFIX}endpoint_probe_outcome{{endpoint={endpoint!r},probe={probe!r}}}",
            view.get("outcome"),
            timestamp=view.get("since", 0.0),
            note=f"GET {url}",
        ),
        Evidence(
            f"{PREFIX}endpoint_http_status_code{{endpoint={endpoint!r},probe={probe!r}}}",
            view.get("status_code"),
        ),
    ]
    if view.get("error"):
        evidence.append(Evidence("probe error", view["error"]))
    if view.get("body_excerpt"):
        evidence.append(Evidence("response body", view["body_excerpt"][:300]))
    return evidence


def _probe_hits(
    ctx: Context, outcomes: set[str], kind: str | None = None, probe: str = "health"
) -> list[Hit]:
    hits = []
    for endpoint, view in ctx.health_endpoints().items():
        if kind and view.get("kind") != kind:
            continue
        probe_view = view.get("probes", {}).get(probe, {})
        if probe_view.get("outcome") in outcomes:
            url = view.get("url", "") + (
                ctx.config.frontend_health_path
                if view.get("kind") == "frontend"
                else ctx.config.worker_health_path
            )
            hits.append(
                Hit(
                    endpoint,
                    {
                        "kind": view.get("kind"),
                        "url": url,
                        "duration": ctx.now - probe_view.get("since", ctx.now),
                    },
                    _probe_evidence(endpoint, probe, probe_view, url),
                    probe_view.get("since", ctx.now),
                )
            )
    return hits


# --- sidecar -------------------------------------------------------------------------


def collector_failing(ctx: Context) -> list[Hit]:
    hits = []
    for status in ctx.state.collectors.values():
        if status.last_success is False:
            hits.append(
                Hit(
                    status.name,
                    {"failures": status.consecutive_failures, "error": status.last_error},
                    [
                        Evidence(
                            f'{PREFIX}collector_success{{collector="{status.name}"}}',
                            0,
                            timestamp=status.last_run_time,
                        ),
                        Evidence("consecutive failures", status.consecutive_failures),
                        Evidence("last error", status.last_error),
                        Evidence(
                            f'{PREFIX}collector_last_success_timestamp_seconds{{collector="{status.name}"}}',
                            status.last_success_time or None,
                            unit="unix seconds",
                        ),
                    ],
                    status.first_failure_time or ctx.now,
                )
            )
    return hits


def series_dropped(ctx: Context) -> list[Hit]:
    if not ctx.state.dropped:
        return []
    worst = sorted(ctx.state.dropped.items(), key=lambda kv: -kv[1])[:5]
    return [
        Hit(
            "cardinality",
            {"metrics": ", ".join(name for name, _ in worst)},
            [Evidence(f'{PREFIX}series_dropped_total{{metric="{name}"}}', count) for name, count in worst],
            ctx.now,
        )
    ]


# --- startup failure / connection anomaly -------------------------------------------


def endpoint_refused(ctx: Context) -> list[Hit]:
    return _probe_hits(ctx, {"refused"})


def endpoint_timeout(ctx: Context) -> list[Hit]:
    return _probe_hits(ctx, {"timeout"})


def endpoint_malformed(ctx: Context) -> list[Hit]:
    return _probe_hits(ctx, {"malformed", "http_error", "error"})


def frontend_no_instances(ctx: Context) -> list[Hit]:
    hits = []
    for endpoint, view in ctx.health_endpoints().items():
        probe = view.get("probes", {}).get("health", {})
        if view.get("kind") == "frontend" and probe.get("outcome") == "ok" and view.get("instances") == []:
            hits.append(
                Hit(
                    endpoint,
                    {},
                    [
                        Evidence(f'{PREFIX}frontend_instances{{endpoint="{endpoint}"}}', 0),
                        Evidence("frontend /health status", probe.get("status")),
                        Evidence("response body", probe.get("body_excerpt", "")[:300]),
                    ],
                    probe.get("since", ctx.now),
                )
            )
    return hits


UNAVAILABLE_REASONS = ("transport.cannot_connect", "backend.unavailable")
STALE_WINDOW = 60.0


def frontend_stale_instances(ctx: Context) -> list[Hit]:
    """/health lists instances, yet they do not serve: the registration outlived the worker."""
    hits = []
    frontend_failures = f"{ctx.names.frontend_prefix}_failures_total"
    unavailable = sum(
        ctx.state.increase(frontend_failures, STALE_WINDOW, ctx.now, reason=reason) or 0.0
        for reason in UNAVAILABLE_REASONS
    )
    dead_workers = [
        name
        for name, view in ctx.health_endpoints().items()
        if view.get("kind") == "worker"
        and view.get("probes", {}).get("health", {}).get("outcome") in {"refused", "timeout"}
    ]
    for endpoint, view in ctx.health_endpoints().items():
        probe = view.get("probes", {}).get("health", {})
        instances = view.get("instances")
        if view.get("kind") != "frontend" or probe.get("outcome") != "ok" or not instances:
            continue
        evidence = [
            Evidence(f'{PREFIX}frontend_instances{{endpoint="{endpoint}"}}', len(instances)),
            Evidence("instances listed by /health", [i.get("instance_id") for i in instances][:5]),
        ]
        if view.get("models") == []:
            evidence.append(
                Evidence(f'{PREFIX}frontend_models{{endpoint="{endpoint}"}}', 0, note="GET /v1/models")
            )
        if unavailable > 0:
            evidence.append(
                Evidence(
                    f'increase({frontend_failures}{{class="Unavailable"}}[{STALE_WINDOW:.0f}s])',
                    unavailable,
                    note="requests failing: " + " / ".join(UNAVAILABLE_REASONS),
                )
            )
        for worker in dead_workers:
            evidence.append(
                Evidence(
                    f'{PREFIX}endpoint_probe_outcome{{endpoint="{worker}",probe="health"}}',
                    ctx.probe(worker).get("outcome"),
                    note="the worker in this pod is down",
                )
            )
        if len(evidence) > 2:
            hits.append(Hit(endpoint, {"count": len(instances)}, evidence, probe.get("since", ctx.now)))
    return hits


KEEPALIVE_LOST = ("keep_alive failed", "lease", "failed to renew")


def worker_registration_lost(ctx: Context) -> list[Hit]:
    errors = ctx.state.facts("dynamo_logs").get("errors")
    if errors is None:
        return []
    lost = [
        s
        for s in errors.recent(since=ctx.now - min(ctx.window, 120.0))
        if s.level == "ERROR" and any(marker in s.message for marker in KEEPALIVE_LOST)
    ]
    if not lost:
        return []
    return [
        Hit(
            "discovery",
            {"count": sum(s.count for s in lost)},
            [
                Evidence(
                    f"log {s.level} {s.target}", s.message[:300], timestamp=s.last_seen, note=f"{s.count}x"
                )
                for s in lost[:3]
            ],
            min(s.first_seen for s in lost),
        )
    ]


def worker_notready_endpoints_ready(ctx: Context) -> list[Hit]:
    hits = []
    for endpoint, view in ctx.health_endpoints().items():
        probe = view.get("probes", {}).get("health", {})
        endpoints = view.get("endpoints")
        if (
            view.get("kind") != "worker"
            or probe.get("status") != "notready"
            or not isinstance(endpoints, dict)
        ):
            continue
        if endpoints and all(status == "ready" for status in endpoints.values()):
            hits.append(
                Hit(
                    endpoint,
                    {"endpoints": ", ".join(sorted(endpoints))},
                    [
                        Evidence(
                            f'{PREFIX}endpoint_status{{endpoint="{endpoint}",probe="health",status="notready"}}',
                            1,
                            timestamp=probe.get("since", ctx.now),
                        ),
                        Evidence("HTTP status", probe.get("status_code")),
                        Evidence("per-endpoint status", endpoints),
                        Evidence("response body", probe.get("body_excerpt", "")[:300]),
                    ],
                    probe.get("since", ctx.now),
                )
            )
    return hits


def dynamo_not_ready(ctx: Context) -> list[Hit]:
    if ctx.in_startup_grace:
        return []
    hits = []
    for hit in _probe_hits(ctx, {"unhealthy"}):
        view = ctx.health_endpoints()[hit.subject]
        status = view["probes"]["health"].get("status")
        if status in {"not_ready", "shutting_down"} or view.get("stage") == "draining":
            continue  # draining is the shutdown rule's
        if (
            view.get("kind") == "worker"
            and status == "notready"
            and isinstance(view.get("endpoints"), dict)
            and view["endpoints"]
            and all(s == "ready" for s in view["endpoints"].values())
        ):
            continue  # the more specific rule above says why
        hit.values["status"] = status
        hits.append(hit)
    return hits


def dynamo_draining(ctx: Context) -> list[Hit]:
    hits = []
    for endpoint, view in ctx.health_endpoints().items():
        probe = view.get("probes", {}).get("health", {})
        live = view.get("probes", {}).get("live", {})
        if (
            probe.get("status") == "not_ready"
            or view.get("stage") == "draining"
            or live.get("status") == "shutting_down"
        ):
            hits.append(
                Hit(
                    endpoint,
                    {},
                    _probe_evidence(endpoint, "health", probe, view.get("url", "")),
                    probe.get("since", ctx.now),
                )
            )
    return hits


def scrape_failing(ctx: Context) -> list[Hit]:
    hits = []
    for endpoint, fact in ctx.scrape_endpoints().items():
        if fact.get("up") is False:
            health = ctx.probe(endpoint)
            if health.get("outcome") in {"refused", "timeout"}:
                continue  # the endpoint itself is down; that finding says it
            hits.append(
                Hit(
                    endpoint,
                    {"reason": fact.get("reason"), "url": fact.get("url")},
                    [
                        Evidence(f'{PREFIX}scrape_up{{endpoint="{endpoint}"}}', 0),
                        Evidence("reason", fact.get("reason")),
                        Evidence("error", fact.get("error")),
                        Evidence("response body", (fact.get("body_excerpt") or "")[:200]),
                    ],
                    ctx.now,
                )
            )
    return hits


def worker_restarted(ctx: Context) -> list[Hit]:
    by_endpoint: dict[str, list[Any]] = {}
    for event in ctx.events("worker_restart"):
        by_endpoint.setdefault(event.source, []).append(event)
    return [
        Hit(
            endpoint,
            {"count": len(events)},
            [Evidence("worker_restart event", e.message, timestamp=e.timestamp) for e in events[-5:]],
            events[0].timestamp,
        )
        for endpoint, events in by_endpoint.items()
    ]


def health_flapping(ctx: Context) -> list[Hit]:
    window = min(ctx.window, 300.0)
    by_source: dict[str, list[Any]] = {}
    for event in ctx.state.recent_events(since=ctx.now - window, kind="health_transition"):
        by_source.setdefault(event.source, []).append(event)
    return [
        Hit(
            source,
            {"count": len(events), "minutes": window / 60},
            [Evidence("health_transition event", e.message, timestamp=e.timestamp) for e in events[-6:]],
            events[0].timestamp,
        )
        for source, events in by_source.items()
        if len(events) >= 3
    ]


def no_dynamo_process(ctx: Context) -> list[Hit]:
    facts = ctx.state.facts("process")
    if not facts or ctx.in_startup_grace or facts.get("processes"):
        return []
    evidence = [Evidence(f"{PREFIX}processes_matched", 0), Evidence("patterns", ctx.config.process_patterns)]
    if facts.get("discovery_error"):
        evidence.append(Evidence("discovery error", facts["discovery_error"]))
    return [Hit("process", {}, evidence, ctx.now)]


def canary_failing(ctx: Context) -> list[Hit]:
    canary = ctx.extra("canary")
    if canary is None:
        return []
    hits = []
    for model, state in canary.models.items():
        if not state.failing or state.last is None:
            continue
        last = state.last
        hits.append(
            Hit(
                model,
                {"failures": state.consecutive_failures, "outcome": last.outcome},
                [
                    Evidence(
                        f'{PREFIX}canary_consecutive_failures{{model="{model}"}}',
                        state.consecutive_failures,
                        timestamp=last.timestamp,
                    ),
                    Evidence("last canary outcome", last.outcome, note=last.error),
                    Evidence("last canary HTTP status", last.status or None),
                    Evidence("last canary latency", round(last.latency, 3), unit="seconds"),
                    Evidence(
                        "x-request-id", last.request_id, note="GET /diagnose/request/" + last.request_id
                    ),
                    Evidence("traceparent", last.traceparent),
                    Evidence("response body", last.body_excerpt[:300]),
                    Evidence(
                        f'{PREFIX}canary_last_success_timestamp_seconds{{model="{model}"}}',
                        state.last_success or None,
                        unit="unix seconds",
                    ),
                ],
                state.failing_since,
            )
        )
    return hits


def otlp_export_failing(ctx: Context) -> list[Hit]:
    telemetry = ctx.extra("otlp")
    if telemetry is None or not telemetry.enabled:
        return []
    status = telemetry.status()
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
                Evidence(f"{PREFIX}otlp_export_failures_total", status["failures"]),
                Evidence(f"{PREFIX}otlp_spans_dropped_total", status["dropped"]),
                Evidence("last export error", status["last_error"]),
                Evidence("OTLP endpoint", f"{status['endpoint']} ({status['protocol']})"),
            ],
            ctx.now,
        )
    ]


def drain_deadline_with_work(ctx: Context) -> list[Hit]:
    summary = ctx.extra("drain")
    if summary is None or not summary.done or not summary.work_left:
        return []
    return [
        Hit(
            "drain",
            {"inflight": summary.inflight_at_end, "duration": summary.duration},
            [
                Evidence(
                    f"{PREFIX}drain_inflight_at_end", summary.inflight_at_end, timestamp=summary.ended_at
                ),
                Evidence(f"{PREFIX}drain_duration_seconds", round(summary.duration, 3), unit="seconds"),
                Evidence(f'{PREFIX}drain_reason{{reason="{summary.reason}"}}', 1),
                Evidence(f"{PREFIX}drain_requests_failed", summary.requests_failed),
            ],
            summary.started_at,
        )
    ]


RULES: tuple[Rule, ...] = (
    Rule(
        "endpoint_refused",
        "startup_failure",
        "critical",
        "{kind} {subject} refuses connections at {url}: nothing listens on its port",
        (
            "Check that the Dynamo process is running: `kubectl logs <pod> -c main` and `kubectl describe pod` for crash loops or OOMKilled.",
            "For a worker, check DYN_SYSTEM_ENABLED=true and DYN_SYSTEM_PORT match the sidecar's worker_system_urls; for the frontend, DYN_HTTP_PORT / --http-port.",
            "If the process is shutting down (SIGTERM), this is expected: a worker closes its system port at once.",
        ),
        endpoint_refused,
        explains=("metrics_scrape_failing", "dynamo_not_ready", "frontend_stale_instances:*"),
    ),
    Rule(
        "endpoint_timeout",
        "connection_anomaly",
        "critical",
        "{kind} {subject} accepts connections but does not answer {url}: the process is hung or overloaded",
        (
            "Check CPU of the Dynamo process (`dynamo_sidecar_process_cpu_seconds_total`) and cgroup throttling: a stalled event loop looks like this.",
            "Take a stack dump: `kubectl exec <pod> -c main -- py-spy dump --pid 1` (Python) or check for SIGSTOP (state T in `ps`).",
            "A worker hung like this drops out of discovery after ~12 s and never re-registers after it resumes: restart the pod.",
        ),
        endpoint_timeout,
        explains=("metrics_scrape_failing", "health_flapping", "frontend_stale_instances:*"),
    ),
    Rule(
        "endpoint_bad_response",
        "connection_anomaly",
        "warning",
        "{kind} {subject} answers {url} with an unusable response",
        (
            "Compare the body in the evidence with what Dynamo 1.6 serves; a proxy or a wrong port can answer instead.",
            "Check the sidecar's frontend_url / worker_system_urls point at Dynamo itself.",
        ),
        endpoint_malformed,
    ),
    Rule(
        "frontend_no_instances",
        "startup_failure",
        "critical",
        "frontend {subject} reports healthy but lists zero worker instances: no model can be served",
        (
            "Check the worker pods: are they running, and did they register (worker logs 'Registered endpoint')?",
            "Check the discovery backend the frontend and workers share (etcd / DYN_DISCOVERY_BACKEND, DYN_NAMESPACE).",
            "Do not rely on the frontend's /health for readiness: it stays 200 with no workers; use `/v1/models` or the sidecar's canary.",
        ),
        frontend_no_instances,
    ),
    Rule(
        "frontend_stale_instances",
        "connection_anomaly",
        "critical",
        "frontend {subject} lists {count} worker instance(s) but serves no model: stale registration, requests fail 503",
        (
            "A worker died without deregistering (SIGKILL, OOM kill, node loss); the frontend drops it after its discovery lease expires (~10-20 s).",
            "Check the worker pods: `kubectl get pods -l nvidia.com/dynamo-component-type=worker` and their last state.",
            "If it persists past a minute, check the discovery backend (etcd) for leftover keys.",
        ),
        frontend_stale_instances,
    ),
    Rule(
        "worker_registration_lost",
        "connection_anomaly",
        "critical",
        "this worker cannot keep its discovery registration ({count} keep-alive errors): it looks healthy but serves nothing",
        (
            "Restart the worker: after a stall (SIGSTOP, long GC, node pressure) Dynamo 1.6 does not re-register on its own.",
            "Check etcd / the discovery store reachability and latency from this pod.",
            "A readiness probe on the worker's /health does not catch this: it stays 200 'ready'.",
        ),
        worker_registration_lost,
    ),
    Rule(
        "worker_notready_endpoints_ready",
        "startup_failure",
        "warning",
        "worker {subject} answers 503 notready although its endpoints ({endpoints}) are ready: health-check payloads are not registered",
        (
            "Set DYN_HEALTH_CHECK_ENABLED=true on the worker (the Dynamo operator does), or DYN_SYSTEM_STARTING_HEALTH_STATUS=ready.",
            "Until then a readiness probe on the system port keeps this pod out of service although the worker serves.",
        ),
        worker_notready_endpoints_ready,
    ),
    Rule(
        "dynamo_not_ready",
        "startup_failure",
        "warning",
        "{kind} {subject} has been unhealthy ('{status}') past the start-up grace",
        (
            "Check the Dynamo logs for the model load or registration step that has not finished.",
            "Check etcd / NATS reachability from the pod; 'no endpoints available' usually means discovery.",
        ),
        dynamo_not_ready,
    ),
    Rule(
        "dynamo_draining",
        "shutdown",
        "info",
        "{subject} is shutting down (draining)",
        (
            "Expected during a rollout or scale-down; new requests get 503 until the pod is gone.",
            "If the pod is not being terminated, check who sent SIGTERM (`kubectl get events`).",
        ),
        dynamo_draining,
    ),
    Rule(
        "metrics_scrape_failing",
        "connection_anomaly",
        "warning",
        "Dynamo /metrics on {subject} cannot be scraped ({reason})",
        (
            "Check the URL in the evidence answers Prometheus text; derived signals (rates, TTFT quantiles) are missing meanwhile.",
            "If the body is very large, raise max_response_bytes.",
        ),
        scrape_failing,
    ),
    Rule(
        "worker_restarted",
        "startup_failure",
        "warning",
        "worker {subject} restarted {count} time(s) in the window (uptime reset)",
        (
            "Check the container's last state: `kubectl get pod -o jsonpath='{{.status.containerStatuses}}'` for OOMKilled or exit 143/911.",
            "With liveness failureThreshold 1 on /live, one slow health check restarts the worker: raise the threshold.",
        ),
        worker_restarted,
    ),
    Rule(
        "health_flapping",
        "connection_anomaly",
        "warning",
        "{subject} changed health state {count} times in {minutes:.0f} min (flapping)",
        (
            "Look at the transitions in the evidence: alternating ok/timeout suggests overload or CPU throttling.",
            "Check probe timeouts against the response times in dynamo_sidecar_endpoint_response_seconds.",
        ),
        health_flapping,
    ),
    Rule(
        "no_dynamo_process",
        "startup_failure",
        "warning",
        "no Dynamo process is visible to the sidecar",
        (
            "Set `shareProcessNamespace: true` on the pod so the sidecar can see the Dynamo processes.",
            "If the entry point is custom, set process_patterns (DYN_SIDECAR_PROCESS_PATTERNS) or process_pid_file.",
        ),
        no_dynamo_process,
    ),
    Rule(
        "collector_failing",
        "sidecar",
        "warning",
        "collector {subject} is failing ({failures} runs in a row): {error}",
        (
            "The signals this collector provides are stale; the rest of the sidecar keeps working.",
            "See the error in the evidence; `dynamo-sidecar check-config` shows the settings it uses.",
        ),
        collector_failing,
    ),
    Rule(
        "series_dropped",
        "sidecar",
        "info",
        "series over the cardinality cap are being dropped ({metrics})",
        ("Raise max_series_per_metric, or deny the noisy family with passthrough_deny.",),
        series_dropped,
    ),
    Rule(
        "drain_deadline_with_work",
        "shutdown",
        "critical",
        "drain reached its deadline after {duration:.0f}s with {inflight:.0f} request(s) still in flight: they were cut off",
        (
            "Raise terminationGracePeriodSeconds (and the sidecar's termination_grace_period) above the longest request, or lower max_tokens for streaming clients.",
            "Enable request migration on the frontend (--migration-limit / DYN_MIGRATION_LIMIT) so cut streams continue on another worker.",
            "Check DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT (30 s): a worker forced out exits 911, which Kubernetes shows as 143.",
        ),
        drain_deadline_with_work,
    ),
    Rule(
        "canary_failing",
        "performance_degradation",
        "critical",
        "canary requests for model {subject} failed {failures} times in a row ({outcome}): the model does not serve end to end",
        (
            "Look up the canary's Dynamo log lines: GET /diagnose/request/<x-request-id> from the evidence (needs log_files), or search the logs for that x_request_id / trace id.",
            "timeout with healthy endpoints means a hung engine or worker: check the worker's CPU and `py-spy dump`; restart it if it never answers.",
            "http_error 503 'not ready' means no live worker serves the model: see the worker pods and the frontend's instance list.",
        ),
        canary_failing,
    ),
    Rule(
        "otlp_export_failing",
        "sidecar",
        "warning",
        "traces cannot be exported to {subject} ({dropped} spans dropped)",
        (
            "Check the OTLP receiver (the OpenTelemetry Collector) is running and reachable at OTEL_EXPORTER_OTLP_ENDPOINT from this pod.",
            "Check OTEL_EXPORTER_OTLP_PROTOCOL matches the port: 4317 is gRPC, 4318 is http/protobuf.",
        ),
        otlp_export_failing,
    ),
)
