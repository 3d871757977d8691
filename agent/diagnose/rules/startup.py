"""Start-up: Dynamo's endpoints that refuse or never become ready, wrong ports, slow starts, restarts and lost registration."""

from __future__ import annotations

from typing import Any

from agent.core import metrics as m
from agent.core.facts import EndpointFacts, Outcome, ProcessFact
from agent.diagnose.context import SHUTDOWN_STATUSES, Context
from agent.diagnose.model import (
    Alert,
    Category,
    Evidence,
    Hit,
    Limits,
    Rule,
    Severity,
    Threshold,
    duration_text,
    registrar,
    who,
)
from agent.diagnose.rules.common import (
    OUTCOME,
    WORKER_EFFECTS,
    _after_drain,
    _engine_starting,
    _grade_by_capacity,
    _health_path,
    _health_url,
    _in_startup,
    _probe_evidence,
    _probe_hits,
)

RULES: list[Rule] = []
rule = registrar(RULES)


def _process_evidence(processes: list[ProcessFact]) -> list[Evidence]:
    return [
        Evidence(
            m.PROCESS_STATE.selector(process=p.process, pid=p.pid),
            p.state,
            note=f"listening on {p.listen_ports or 'no port the sidecar can see'}",
        )
        for p in processes[:3]
    ]


def _logs_not_read_since(ctx: Context, since: float) -> bool:
    """With log_files, Dynamo's own shutdown lines tell a deliberate stop from a crash: a
    refusal is judged once the logs were read after it began (at most two intervals late)."""
    if not ctx.config.log_files or not ctx.logs.time:
        return False
    return ctx.logs.time < since and ctx.now - since < 2 * ctx.config.dynamo_interval


def _in_startup_workers(ctx: Context) -> bool:
    """Within the start-up grace, before any worker registered: workers are still starting."""
    if not ctx.in_startup_grace:
        return False
    events = ctx.events("instances_changed")
    return not any(e.attributes.get("to", 0) > 0 for e in events) and not any(
        view.instance_ids for view in ctx.health.endpoints.values() if view.kind == "frontend"
    )


def _notready_but_ready(view: EndpointFacts) -> bool:
    return (
        view.kind == "worker"
        and view.probe().status == "notready"
        and bool(view.endpoints)
        and all(status == "ready" for status in (view.endpoints or {}).values())
    )


@rule(
    id="dynamo_starting",
    category=Category.STARTUP_FAILURE,
    severity=Severity.INFO,
    summary="{who} is starting: {what}, {elapsed} into the {grace} start-up grace",
    actions=(
        "Nothing to do yet: Dynamo loads the model and registers before it answers. If this is still here when the grace ends, it becomes a fault finding.",
        "A slow start beyond the grace: raise startup_grace, and check the engine's logs (`kubectl logs <pod> -c main`).",
    ),
    explains=("canary_failing:*", "request_failures:*", "metrics_scrape_failing:@role", "engine_hung:*"),
    state=True,
)
def dynamo_starting(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    grace = duration_text(ctx.config.startup_grace)
    for endpoint, view in ctx.health.endpoints.items():
        probe = view.probe()
        if not _in_startup(ctx, endpoint) or probe.outcome == Outcome.OK:
            continue
        kind = view.kind
        hits.append(
            Hit(
                endpoint,
                {
                    "who": who(kind, endpoint),
                    "what": f"no answer yet at {_health_url(ctx, view)} ({probe.status or probe.outcome})",
                    "elapsed": duration_text(ctx.uptime),
                    "grace": grace,
                },
                _probe_evidence(endpoint, "health", probe, _health_url(ctx, view)),
                ctx.state.started,
                role=kind,
            )
        )
    started = _engine_starting(ctx)
    if started:
        signals = ctx.signals
        hits.append(
            Hit(
                "engine",
                {
                    "who": "the engine",
                    "what": f"{signals.stalled_inflight:.0f} request(s) wait for its first token, none produced since the worker started",
                    "elapsed": duration_text(ctx.now - started),
                    "grace": grace,
                },
                [
                    Evidence(
                        ctx.names.inflight,
                        signals.stalled_inflight,
                        note="frontend or worker in-flight gauge",
                    ),
                    Evidence(
                        " + ".join(ctx.names.progress_counters()[:2]) + " ...",
                        "unchanged since the worker started",
                        timestamp=started,
                    ),
                    Evidence("worker uptime", round(ctx.now - started, 1), unit="seconds"),
                ],
                started,
                role="worker",
            )
        )
    return hits


@rule(
    id="no_dynamo_process",
    category=Category.STARTUP_FAILURE,
    severity=Severity.WARNING,
    summary="no {what} is visible to the sidecar",
    actions=(
        "non-leader: This is a multinode non-leader pod: main runs the leader's helper (vLLM `ray start --block` or `dynamo.vllm --headless`, SGLang `--node-rank N`, TRT-LLM sshd for mpirun); none runs, so the group's leader cannot use this pod's GPUs. `kubectl logs <pod> -c main` and the leader's logs.",
        "If Dynamo's endpoints are refused too, Dynamo is not running: `kubectl describe pod` for the main container's state and last exit.",
        "If Dynamo answers, the sidecar cannot see its processes: set `shareProcessNamespace: true` on the pod.",
        "If the entry point is custom, set process_patterns (DYN_SIDECAR_PROCESS_PATTERNS) or process_pid_file.",
    ),
    explains=("endpoint_refused:*", "port_not_listening:*", "metrics_scrape_failing:*", *WORKER_EFFECTS),
    fleet=lambda s, t: s(m.PROCESSES_MATCHED.name) + " == 0",
)
def no_dynamo_process(ctx: Context, t: Limits) -> list[Hit]:
    facts = ctx.processes
    if not facts.time or facts.processes or ctx.any_starting():
        return []
    answered = [v.first_ok_at for v in ctx.health.endpoints.values()]
    if max(answered, default=0.0) > facts.time:
        return []  # Dynamo answered after the last process scan: that scan is stale, not proof
    evidence = [Evidence(m.PROCESSES_MATCHED.name, 0), Evidence("patterns", ctx.config.process_patterns)]
    if facts.discovery_error:
        evidence.append(Evidence("discovery error", facts.discovery_error))
    non_leader = ctx.config.role == "non-leader"
    what = (
        "Dynamo engine rank or multinode agent (ray, sshd, dynamo --headless)"
        if non_leader
        else "Dynamo process"
    )
    return [
        Hit(
            "process",
            {"what": what},
            evidence,
            ctx.state.started if ctx.uptime < 120 else ctx.now,
            role="non-leader" if non_leader else "",
        )
    ]


@rule(
    id="endpoint_wrong_port",
    category=Category.STARTUP_FAILURE,
    severity=Severity.WARNING,
    summary="the sidecar probes {who} at {url}, which refuses, but the {kind} process answers on port {port}: the sidecar's configured port is wrong",
    actions=(
        "worker: Point the sidecar at the port Dynamo uses: set worker_system_urls (DYN_SIDECAR_WORKER_SYSTEM_URLS) to {answers}, or pass the main container's DYN_SYSTEM_PORT to the sidecar.",
        "frontend: Point the sidecar at the port Dynamo uses: set frontend_url (DYN_SIDECAR_FRONTEND_URL) to {answers}, or pass the main container's DYN_HTTP_PORT to the sidecar.",
        "Check the pod's probes and Service use that port too.",
    ),
    explains=("endpoint_refused", "metrics_scrape_failing", "port_not_listening:@role"),
)
def endpoint_wrong_port(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for hit in _probe_hits(ctx, {Outcome.REFUSED}):
        view = ctx.health.endpoints[hit.subject]
        answers = view.answers_on
        if answers is None:
            continue
        hit.values.update(kind=view.kind, port=answers.port, answers=answers.url)
        hit.evidence.append(
            Evidence(
                f"GET {answers.url}{_health_path(ctx, view.kind)}",
                answers.status,
                timestamp=answers.seen_at,
                note="Dynamo's health answers on the port its process listens on",
            )
        )
        hit.evidence.extend(_process_evidence(ctx.processes.of_role(hit.role)))
        hits.append(hit)
    return hits


@rule(
    id="endpoint_refused",
    category=Category.STARTUP_FAILURE,
    severity=Severity.CRITICAL,
    summary="{who} refuses connections at {url} for {for}: nothing listens on its port{capacity}",
    actions=(
        "{alive}",
        "worker: Check DYN_SYSTEM_ENABLED=true and that DYN_SYSTEM_PORT matches the sidecar's worker_system_urls.",
        "frontend: Check DYN_HTTP_PORT / --http-port matches the sidecar's frontend_url.",
    ),
    explains=("metrics_scrape_failing", "dynamo_not_ready", "port_not_listening:@role", *WORKER_EFFECTS),
    fleet=lambda s, t: s(OUTCOME, 'probe="health",outcome="refused"') + " == 1",
    alert=Alert(
        "DynamoEndpointRefused",
        "Dynamo {{ $labels.endpoint }} in {{ $labels.namespace }}/{{ $labels.pod }} refuses connections",
        "1m",
    ),
)
def endpoint_refused(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for hit in _probe_hits(ctx, {Outcome.REFUSED}):
        view = ctx.health.endpoints[hit.subject]
        if (
            _in_startup(ctx, hit.subject)
            or _after_drain(ctx, hit.subject, hit.since)
            or view.answers_on is not None
            or _logs_not_read_since(ctx, hit.since)
        ):
            continue
        processes = ctx.processes.of_role(hit.role)
        if processes:
            hit.values["alive"] = (
                f"The {hit.role} process is alive (pid {processes[0].pid}) but not listening on this port: check its logs for a bind error, or whether it is still loading."
            )
            hit.evidence.extend(_process_evidence(processes))
        else:
            hit.values["alive"] = (
                "No Dynamo process of this role is visible: check `kubectl describe pod` for crash loops, OOMKilled or the last exit code."
            )
        hits.append(_grade_by_capacity(ctx, hit, {hit.subject}))
    return hits


@rule(
    id="frontend_no_instances",
    category=Category.STARTUP_FAILURE,
    severity=Severity.CRITICAL,
    summary="frontend {subject} reports healthy but has listed zero worker instances for {for}: no model can be served",
    actions=(
        "Check the worker pods: are they running, and did they register (worker logs 'Registered endpoint')?",
        "Check the discovery backend the frontend and workers share (etcd / DYN_DISCOVERY_BACKEND, DYN_NAMESPACE).",
        "Do not rely on the frontend's /health for readiness: it stays 200 with no workers; use `/v1/models` or the sidecar's canary.",
    ),
    explains=("canary_failing:*", "request_failures:*"),
    thresholds=(Threshold("for_seconds", 0.0, "seconds", "How long zero instances must last."),),
    fleet=lambda s, t: (
        s(m.FRONTEND_INSTANCES.name) + " == 0"
        if t.for_seconds <= 0
        else f"max_over_time({s(m.FRONTEND_INSTANCES.name)}[{t.for_seconds:g}s]) == 0"
    ),
    alert=Alert(
        "DynamoFrontendNoWorkers",
        "Frontend {{ $labels.namespace }}/{{ $labels.pod }} reports healthy with zero worker instances",
        "2m",
    ),
)
def frontend_no_instances(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for endpoint, view in ctx.health.endpoints.items():
        probe = view.probe()
        if view.kind != "frontend" or probe.outcome != Outcome.OK or view.instance_ids != []:
            continue
        since = view.instances_since or probe.since or ctx.now
        if ctx.now - since < t.for_seconds or _in_startup_workers(ctx):
            continue
        evidence = [
            Evidence(m.FRONTEND_INSTANCES.selector(endpoint=endpoint), 0, timestamp=since),
            Evidence("frontend /health status", probe.status),
            Evidence("response body", probe.body_excerpt[:300]),
        ]
        gone = sorted(m for m in view.models_seen if m not in (view.models or []))
        if gone:
            evidence.append(Evidence("models no longer listed by /v1/models", gone))
        hits.append(Hit(endpoint, {"for": duration_text(ctx.now - since)}, evidence, since, role="frontend"))
    return hits


@rule(
    id="worker_notready_endpoints_ready",
    category=Category.STARTUP_FAILURE,
    severity=Severity.WARNING,
    summary="{who} answers 503 notready although its endpoints ({endpoints}) are ready: health-check payloads are not registered",
    actions=(
        "Set DYN_HEALTH_CHECK_ENABLED=true on the worker (the Dynamo operator does), or DYN_SYSTEM_STARTING_HEALTH_STATUS=ready.",
        "Until then a readiness probe on the system port keeps this pod out of service although the worker serves.",
    ),
    fleet=lambda s, t: (
        s(m.ENDPOINT_STATUS.name, 'probe="health",status="notready"')
        + " == 1 and on (namespace, pod) min by (namespace, pod) ("
        + s(m.WORKER_ENDPOINT_READY.name)
        + ") == 1"
    ),
    alert=Alert(
        "DynamoWorkerNotReadyWhileServing",
        "Worker {{ $labels.namespace }}/{{ $labels.pod }} is notready while its endpoints are ready (DYN_HEALTH_CHECK_ENABLED unset?)",
        "5m",
    ),
)
def worker_notready_endpoints_ready(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for endpoint, view in ctx.health.endpoints.items():
        if not _notready_but_ready(view):
            continue
        probe = view.probe()
        hits.append(
            Hit(
                endpoint,
                {"who": who("worker", endpoint), "endpoints": ", ".join(sorted(view.endpoints or {}))},
                [
                    Evidence(
                        m.ENDPOINT_STATUS.selector(endpoint=endpoint, probe="health", status="notready"),
                        1,
                        timestamp=probe.since,
                    ),
                    Evidence("HTTP status", probe.status_code),
                    Evidence("per-endpoint status", view.endpoints),
                    Evidence("response body", probe.body_excerpt[:300]),
                ],
                probe.since or ctx.now,
                role="worker",
            )
        )
    return hits


@rule(
    id="dynamo_not_ready",
    category=Category.STARTUP_FAILURE,
    severity=Severity.WARNING,
    summary="{who} has been unhealthy ('{status}') for {for}, past the start-up grace",
    actions=(
        "Check the Dynamo logs for the model load or registration step that has not finished.",
        "Check etcd / NATS reachability from the pod; 'no endpoints available' usually means discovery.",
    ),
)
def dynamo_not_ready(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for hit in _probe_hits(ctx, {Outcome.UNHEALTHY}):
        view = ctx.health.endpoints[hit.subject]
        status = view.probe().status
        if _in_startup(ctx, hit.subject) or status in SHUTDOWN_STATUSES or view.stage == "draining":
            continue  # starting, or draining: the state rules say it
        if _notready_but_ready(view):
            continue  # the more specific rule says why
        hit.values["status"] = status
        hits.append(hit)
    return hits


@rule(
    id="worker_restarted",
    category=Category.STARTUP_FAILURE,
    severity=Severity.WARNING,
    summary="{who} restarted {count} time(s) in the window (uptime reset)",
    actions=(
        "Check the container's last state: `kubectl get pod -o jsonpath='{{.status.containerStatuses}}'` for OOMKilled or exit 143/911.",
        "With liveness failureThreshold 1 on /live, one slow health check restarts the worker: raise the threshold.",
    ),
    thresholds=(Threshold("restarts", 1, "restarts", "Restarts within the window that make a finding."),),
    fleet=lambda s, t: "increase(" + s(m.WORKER_RESTARTS_TOTAL.name) + f"[15m]) >= {t.restarts:g}",
    alert=Alert(
        "DynamoWorkerRestarting",
        "Worker {{ $labels.namespace }}/{{ $labels.pod }} restarted {{ $value }} times in 15 minutes",
    ),
    events=True,
)
def worker_restarted(ctx: Context, t: Limits) -> list[Hit]:
    by_endpoint: dict[str, list[Any]] = {}
    for event in ctx.state.recent_events(since=ctx.now - min(ctx.window, 900.0), kind="worker_restart"):
        by_endpoint.setdefault(event.source, []).append(event)
    return [
        Hit(
            endpoint,
            {"who": who("worker", endpoint), "count": len(events)},
            [Evidence("worker_restart event", e.message, timestamp=e.timestamp) for e in events[-5:]],
            min(e.timestamp for e in events),
            role="worker",
            last_event=max(e.timestamp for e in events),
        )
        for endpoint, events in by_endpoint.items()
        if len(events) >= t.restarts
    ]


@rule(
    id="port_not_listening",
    category=Category.STARTUP_FAILURE,
    severity=Severity.CRITICAL,
    summary="the {subject} port {port} is not listening in this pod",
    actions=(
        "The Dynamo process has not bound its port: check its logs for the bind error or a crash.",
        "Check the port settings (DYN_HTTP_PORT, DYN_SYSTEM_PORT; the system port must be below 32768 in Dynamo 1.6).",
    ),
    fleet=lambda s, t: s(m.TCP_LISTENING.name) + " == 0",
    alert=Alert(
        "DynamoPortNotListening",
        "Dynamo's {{ $labels.role }} port {{ $labels.port }} is not listening in {{ $labels.namespace }}/{{ $labels.pod }}",
        "2m",
    ),
)
def port_not_listening(ctx: Context, t: Limits) -> list[Hit]:
    if ctx.in_startup_grace:
        return []
    facts = ctx.tcp
    hits = []
    for port, listening in facts.listening.items():
        if listening is False:
            role = facts.service_ports.get(port, "dynamo")
            hits.append(
                Hit(
                    role,
                    {"port": port},
                    [Evidence(m.TCP_LISTENING.selector(port=port, role=role), 0)],
                    ctx.now,
                    role="frontend" if role == "frontend" else "worker",
                )
            )
    return hits
