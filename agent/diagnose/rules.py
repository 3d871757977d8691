"""The rule catalogue, part one: Dynamo's endpoints, registration, start-up, shutdown, canaries,
requests and the sidecar itself. Each rule is one record (metadata, thresholds, the pod
predicate, the fleet PromQL and the alert) declared over its predicate. Rules never read the
network."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from agent.catalogue import metric
from agent.diagnose.context import SHUTDOWN_STATUSES, Context, first_rise, last_rise, rises
from agent.diagnose.model import (
    Alert,
    Category,
    Evidence,
    Hit,
    Limits,
    NoAlert,
    Rule,
    Severity,
    Threshold,
    duration_text,
    registrar,
    who,
)
from agent.facts import DependencyProbe, EndpointFacts, Outcome, ProbeFact, ProcessFact
from agent.signals import CLIENT_ERROR_TYPES, engine_start, produced_since

RULES: list[Rule] = []
rule = registrar(RULES)

OUTCOME = metric("endpoint_probe_outcome")
# A worker fault explains what the frontend and the canary see of it.
WORKER_EFFECTS = (
    "frontend_no_instances:*",
    "frontend_stale_instances:*",
    "canary_failing:*",
    "request_failures:*",
    "engine_hung:*",
    "slo_breach:*",
    "latency_regression:*",
)


def _health_path(ctx: Context, kind: str) -> str:
    return ctx.config.frontend_health_path if kind == "frontend" else ctx.config.worker_health_path


def _health_url(ctx: Context, view: EndpointFacts) -> str:
    return view.url + _health_path(ctx, view.kind)


def _probe_evidence(endpoint: str, probe: str, view: ProbeFact, url: str) -> list[Evidence]:
    evidence = [
        Evidence(
            f"{OUTCOME}{{endpoint={endpoint!r},probe={probe!r}}}",
            view.outcome,
            timestamp=view.since,
            note=f"GET {url}",
        ),
        Evidence(
            f"{metric('endpoint_http_status_code')}{{endpoint={endpoint!r},probe={probe!r}}}",
            view.status_code,
        ),
    ]
    if view.error:
        evidence.append(Evidence("probe error", view.error))
    if view.body_excerpt:
        evidence.append(Evidence("response body", view.body_excerpt[:300]))
    return evidence


def _probe_hits(ctx: Context, outcomes: set[Outcome], probe: str = "health") -> list[Hit]:
    hits = []
    for endpoint, view in ctx.health.endpoints.items():
        probe_view = view.probe(probe)
        if probe_view.outcome not in outcomes:
            continue
        url = _health_url(ctx, view)
        since = probe_view.since or ctx.now
        kind = view.kind
        hits.append(
            Hit(
                endpoint,
                {"who": who(kind, endpoint), "url": url, "for": duration_text(ctx.now - since)},
                _probe_evidence(endpoint, probe, probe_view, url),
                since,
                role=kind,
            )
        )
    return hits


def _held(series: str, seconds: float) -> str:
    """PromQL: the 0/1 series has been 1 for at least `seconds` (at every sample)."""
    if seconds <= 0:
        return f"{series} == 1"
    return f"min_over_time({series}[{seconds:g}s]) == 1"


def _process_evidence(processes: list[ProcessFact]) -> list[Evidence]:
    return [
        Evidence(
            f'{metric("process_state")}{{process="{p.process}",pid="{p.pid}"}}',
            p.state,
            note=f"listening on {p.listen_ports or 'no port the sidecar can see'}",
        )
        for p in processes[:3]
    ]


# --- what a pod with several workers has left ---------------------------------------------------


def _endpoints_of(ctx: Context, process: ProcessFact) -> set[str]:
    """The watched worker endpoints this process serves (its listening ports)."""
    return {
        endpoint
        for endpoint, view in ctx.health.endpoints.items()
        if view.kind == "worker" and urlsplit(view.url).port in process.listen_ports
    }


def _served_share(ctx: Context, window: float = 60.0) -> float | None:
    """Share of the frontend's requests served (status success) over the last minute."""
    total = ctx.state.increase(ctx.names.requests_total, window, ctx.now)
    if not total:
        return None
    served = ctx.state.increase(ctx.names.requests_total, window, ctx.now, status="success") or 0.0
    return min(1.0, served / total)


def _grade_by_capacity(ctx: Context, hit: Hit, lost: set[str]) -> Hit:
    """A worker fault in a pod whose other workers still answer: say what is left, and grade
    it warning (part of the capacity is lost) instead of critical (nothing serves). Other
    hits get an empty `capacity`."""
    hit.values.setdefault("capacity", "")
    workers = sorted(e for e, v in ctx.health.endpoints.items() if v.kind == "worker")
    serving = [e for e in workers if e not in lost and ctx.probe(e).outcome == Outcome.OK]
    if hit.role != "worker" or len(workers) < 2 or not serving:
        return hit
    share = _served_share(ctx)
    served = ""
    if share is not None:  # 99.6% is not "100%" while some fail
        served = f", {share:.1%}" if 0.99 < share < 1 else f", {share:.0%}"
        served += " of requests in the last minute were served"
    hit.values["capacity"] = (
        f"; {len(serving)} of {len(workers)} workers in this pod still answer ({', '.join(serving)}){served}:"
        f" about {1 - len(serving) / len(workers):.0%} of its capacity is lost"
    )
    hit.severity = "warning"
    hit.evidence.append(
        Evidence(
            "workers of this pod that still answer", serving, note=f"of {len(workers)}: {', '.join(workers)}"
        )
    )
    if share is not None:
        hit.evidence.append(
            Evidence(
                f'increase({ctx.names.requests_total}{{status="success"}}[60s]) / increase({ctx.names.requests_total}[60s])',
                round(share, 3),
                unit="ratio",
            )
        )
    return hit


# --- start-up and shutdown: states, not faults ------------------------------------------------


def _in_startup(ctx: Context, endpoint: str) -> bool:
    return ctx.starting(endpoint)


def _logs_not_read_since(ctx: Context, since: float) -> bool:
    """With log_files, Dynamo's own shutdown lines tell a deliberate stop from a crash: a
    refusal is judged once the logs were read after it began (at most two intervals late)."""
    if not ctx.config.log_files or not ctx.logs.time:
        return False
    return ctx.logs.time < since and ctx.now - since < 2 * ctx.config.dynamo_interval


DRAIN_SLACK = 1.0  # a drain sign this long after the refusal still explains it (log lag)


def _after_drain(ctx: Context, endpoint: str, since: float) -> float:
    """When a drain was seen that the refusal at `since` followed (0 when none). Only signs
    seen by then count: Dynamo logs its shutdown lines again as the process exits, after the
    port closed, and such a late line must not turn the drain into a crash. A shutdown that
    followed a lost dependency (etcd) is that dependency's consequence, not a drain."""
    drained = ctx.drain_seen(endpoint, until=since + DRAIN_SLACK)
    if not drained or _dependency_lost_before(ctx, drained) is not None:
        return 0.0
    return drained


def _dependency_lost_before(ctx: Context, moment: float) -> DependencyProbe | None:
    """etcd failing now, its failure possibly begun before `moment` (its last good answer
    came earlier: a probe sees a loss up to one interval late), unless the sidecar itself is
    draining (then the pod is terminating whatever etcd does). Dynamo shuts itself down a
    lease TTL after etcd is gone, through the same stages as on SIGTERM: that shutdown is
    etcd's symptom, not a requested drain. (NATS or other probed dependencies do not end
    Dynamo's process: a drain beside them stays a drain.)"""
    drain = ctx.components.drain
    if ctx.draining or (drain is not None and drain.started_at <= moment):
        return None
    failing = [
        p for p in ctx.tcp.probes.values() if p.role == "etcd" and p.outcome != "ok" and p.last_ok <= moment
    ]
    return min(failing, key=lambda p: p.since) if failing else None


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


def _engine_starting(ctx: Context) -> float:
    """When the worker whose engine holds work without producing anything started, while it
    is within the start-up grace and has produced no token since (0 otherwise); see
    agent.signals.engine_start. Without a visible worker (a frontend pod), the sidecar's own
    start-up grace stands in."""
    if ctx.signals.stalled_inflight <= 0:
        return 0.0
    uptimes = [
        view.uptime_seconds
        for view in ctx.health.endpoints.values()
        if view.kind == "worker" and view.uptime_seconds is not None
    ]
    if uptimes:
        return engine_start(ctx.state, ctx.names, uptimes, ctx.config.startup_grace, ctx.now)
    if ctx.in_startup_grace and not produced_since(ctx.state, ctx.names, ctx.state.started, ctx.now):
        return ctx.state.started
    return 0.0


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


# --- processes and ports -----------------------------------------------------------------------


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
    fleet=lambda s, t: s(metric("processes_matched")) + " == 0",
)
def no_dynamo_process(ctx: Context, t: Limits) -> list[Hit]:
    facts = ctx.processes
    if not facts.time or facts.processes or ctx.any_starting():
        return []
    answered = [v.first_ok_at for v in ctx.health.endpoints.values()]
    if max(answered, default=0.0) > facts.time:
        return []  # Dynamo answered after the last process scan: that scan is stale, not proof
    evidence = [Evidence(metric("processes_matched"), 0), Evidence("patterns", ctx.config.process_patterns)]
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
    id="process_stalled",
    category=Category.CONNECTION_ANOMALY,
    severity=Severity.CRITICAL,
    summary="process {subject} is {state_name} (state {state}) for {for}: it runs no code and answers nothing{capacity}",
    actions=(
        "State T: someone sent SIGSTOP or a debugger holds it; `kill -CONT <pid>` resumes it, but a Dynamo worker stopped past ~12 s does not re-register: restart the pod.",
        "State D: it waits on the kernel (storage, NFS, a GPU driver call): check `cat /proc/<pid>/stack`, dmesg and the node's storage.",
    ),
    explains=(
        "endpoint_timeout:@role",
        "worker_registration_lost:*",
        "health_flapping:@role",
        "metrics_scrape_failing:@role",
        *WORKER_EFFECTS,
    ),
    thresholds=(
        Threshold("stopped_seconds", 0.0, "seconds", "How long a process stays in state T before it counts."),
        Threshold(
            "uninterruptible_seconds", 10.0, "seconds", "How long in state D (uninterruptible) counts."
        ),
    ),
    fleet=lambda s, t: (
        _held(s(metric("process_state"), 'state=~"T|t"'), t.stopped_seconds)
        + " or "
        + _held(s(metric("process_state"), 'state="D"'), t.uninterruptible_seconds)
    ),
    alert=Alert(
        "DynamoProcessStalled",
        "Dynamo process {{ $labels.process }} in {{ $labels.namespace }}/{{ $labels.pod }} is in state {{ $labels.state }}",
        "1m",
    ),
)
def process_stalled(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    names = {"T": "stopped", "t": "stopped by a tracer", "D": "in uninterruptible sleep"}
    for process in ctx.processes.readable():
        state = process.state
        if state not in names:
            continue
        since = process.state_since or ctx.now
        limit = t.uninterruptible_seconds if state == "D" else t.stopped_seconds
        if ctx.now - since < limit:
            continue
        role = process.role
        hit = Hit(
            process.name,
            {"state": state, "state_name": names[state], "for": duration_text(ctx.now - since)},
            [
                Evidence(
                    f'{metric("process_state")}{{pid="{process.pid}",state="{state}"}}',
                    1,
                    timestamp=since,
                ),
                Evidence("command line", process.cmdline[:200]),
            ],
            since,
            role=role,
        )
        # Its endpoints by its ports; where those are not visible, the ones that hang now.
        lost = _endpoints_of(ctx, process) or {
            e
            for e, v in ctx.health.endpoints.items()
            if v.kind == "worker" and v.probe().outcome == Outcome.TIMEOUT
        }
        hits.append(_grade_by_capacity(ctx, hit, lost))
    return hits


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
    id="endpoint_timeout",
    category=Category.CONNECTION_ANOMALY,
    severity=Severity.CRITICAL,
    summary="{who} accepts connections but does not answer {url} for {for}: the process is hung or overloaded{capacity}",
    actions=(
        "Check the process state (T: stopped, D: blocked in the kernel) and CPU (`dynamo_sidecar_process_cpu_seconds_total`) and cgroup throttling.",
        "Take a stack dump: `kubectl exec <pod> -c main -- py-spy dump --pid <pid>`.",
        "worker: A worker hung like this drops out of discovery after ~12 s and never re-registers after it resumes: restart the pod.",
    ),
    explains=("metrics_scrape_failing", "health_flapping:*", "dynamo_not_ready", *WORKER_EFFECTS),
    fleet=lambda s, t: s(OUTCOME, 'probe="health",outcome="timeout"') + " == 1",
    alert=Alert(
        "DynamoEndpointHung",
        "Dynamo {{ $labels.endpoint }} in {{ $labels.namespace }}/{{ $labels.pod }} accepts connections but does not answer",
        "1m",
    ),
)
def endpoint_timeout(ctx: Context, t: Limits) -> list[Hit]:
    return [
        _grade_by_capacity(ctx, hit, {hit.subject})
        for hit in _probe_hits(ctx, {Outcome.TIMEOUT})
        if not _in_startup(ctx, hit.subject) and not _after_drain(ctx, hit.subject, hit.since)
    ]


@rule(
    id="endpoint_bad_response",
    category=Category.CONNECTION_ANOMALY,
    severity=Severity.WARNING,
    summary="{who} {what}",
    actions=(
        "Compare the body in the evidence with what Dynamo 1.6 serves; a proxy or another server on that port can answer instead.",
        "Check the sidecar's frontend_url / worker_system_urls point at Dynamo itself.",
    ),
    explains=("metrics_scrape_failing",),
    fleet=lambda s, t: s(OUTCOME, 'probe="health",outcome=~"malformed|http_error|error"') + " == 1",
)
def endpoint_bad_response(ctx: Context, t: Limits) -> list[Hit]:
    hits = _probe_hits(ctx, {Outcome.MALFORMED, Outcome.HTTP_ERROR, Outcome.ERROR})
    for hit in hits:
        probe = ctx.probe(hit.subject)
        url = hit.values["url"]
        if probe.outcome == Outcome.ERROR:
            hit.values["what"] = f"closes or resets the connection at {url} without an answer ({probe.error})"
        elif probe.outcome == Outcome.HTTP_ERROR:
            hit.values["what"] = f"answers {url} with HTTP {probe.status_code} and no health body"
        else:
            hit.values["what"] = f"answers {url} with a body that is not Dynamo's health JSON ({probe.error})"
    return hits


# --- registration ---------------------------------------------------------------------------------


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
        s(metric("frontend_instances")) + " == 0"
        if t.for_seconds <= 0
        else f"max_over_time({s(metric('frontend_instances'))}[{t.for_seconds:g}s]) == 0"
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
            Evidence(f'{metric("frontend_instances")}{{endpoint="{endpoint}"}}', 0, timestamp=since),
            Evidence("frontend /health status", probe.status),
            Evidence("response body", probe.body_excerpt[:300]),
        ]
        gone = sorted(m for m in view.models_seen if m not in (view.models or []))
        if gone:
            evidence.append(Evidence("models no longer listed by /v1/models", gone))
        hits.append(Hit(endpoint, {"for": duration_text(ctx.now - since)}, evidence, since, role="frontend"))
    return hits


def _in_startup_workers(ctx: Context) -> bool:
    """Within the start-up grace, before any worker registered: workers are still starting."""
    if not ctx.in_startup_grace:
        return False
    events = ctx.events("instances_changed")
    return not any(e.attributes.get("to", 0) > 0 for e in events) and not any(
        view.instance_ids for view in ctx.health.endpoints.values() if view.kind == "frontend"
    )


UNAVAILABLE_REASONS = ("transport.cannot_connect", "backend.unavailable")
STALE_WINDOW = 60.0


@rule(
    id="frontend_stale_instances",
    category=Category.CONNECTION_ANOMALY,
    severity=Severity.CRITICAL,
    summary="frontend {subject} lists {count} worker instance(s) {which}: {why}",
    actions=(
        "A worker died without deregistering (SIGKILL, OOM kill, node loss); the frontend drops it after its discovery lease expires (~10-20 s).",
        "Check the worker pods: `kubectl get pods -l nvidia.com/dynamo-component-type=worker` and their last state.",
        "If it persists past a minute, check the discovery backend (etcd) for leftover keys.",
    ),
    explains=("canary_failing:*", "request_failures:*"),
    fleet=lambda s, t: (
        "("
        + s(metric("frontend_instances"))
        + " > 0 and on (namespace, pod, endpoint) "
        + s(metric("frontend_models"))
        + " == 0) or ("
        + s(metric("frontend_instances"))
        + " > 0 and on (namespace, pod) sum by (namespace, pod) (increase("
        + s("dynamo_frontend_failures_total", f'reason=~"{"|".join(UNAVAILABLE_REASONS)}"')
        + f"[{STALE_WINDOW:.0f}s])) > 0)"
    ),
    alert=Alert(
        "DynamoFrontendStaleInstances",
        "Frontend {{ $labels.namespace }}/{{ $labels.pod }} lists worker instances that do not serve",
        "1m",
    ),
    events=True,
)
def frontend_stale_instances(ctx: Context, t: Limits) -> list[Hit]:
    """/health lists instances, yet requests to them fail: the registration outlived the
    worker. Evidence must come from the frontend's own view (no models, requests failing as
    unavailable); a worker probe alone proves nothing (the sidecar may probe a wrong port)."""
    hits = []
    failures = ctx.names.failures_total
    for endpoint, view in ctx.health.endpoints.items():
        probe = view.probe()
        ids = view.instance_ids or []
        if view.kind != "frontend" or probe.outcome != Outcome.OK or not ids:
            continue
        # Only failures since the list took its present shape are about the instances it
        # lists now: once a dead worker is dropped, the earlier failures were about it.
        changed = [e.timestamp for e in ctx.events("instances_changed") if e.source == endpoint]
        window = min(STALE_WINDOW, ctx.now - max(changed)) if changed else STALE_WINDOW
        unavailable = sum(
            ctx.state.increase(failures, window, ctx.now, reason=reason) or 0.0
            for reason in UNAVAILABLE_REASONS
        )
        failed_first, failed_last = rises(
            ctx.state.series_matching(failures),
            ctx.now - window,
            ctx.now,
            lambda labels: labels.get("reason") in UNAVAILABLE_REASONS,
        )
        first_failure = failed_first or ctx.now
        no_models = view.models == []
        if not no_models and unavailable <= 0:
            continue
        # Requests served since the failures began: some listed instances still serve.
        served = (
            ctx.state.increase(ctx.names.requests_total, ctx.now - first_failure, ctx.now, status="success")
            or 0.0
            if unavailable > 0 and not no_models
            else 0.0
        )
        evidence = [
            Evidence(f'{metric("frontend_instances")}{{endpoint="{endpoint}"}}', len(ids)),
            Evidence("instance ids listed by /health", ids[:5]),
        ]
        why = []
        if no_models:
            evidence.append(
                Evidence(f'{metric("frontend_models")}{{endpoint="{endpoint}"}}', 0, note="GET /v1/models")
            )
            why.append("/v1/models lists no model")
        if unavailable > 0:
            evidence.append(
                Evidence(
                    f'increase({failures}{{reason=~"{"|".join(UNAVAILABLE_REASONS)}"}}[{window:.0f}s])',
                    unavailable,
                )
            )
            why.append(
                f"{unavailable:.0f} request(s) failed as unavailable in the last {duration_text(window)}"
            )
        # Since the model left /v1/models, or the first of the failed requests; the failures
        # alone are events: once requests succeed after them, they are past.
        starts = [failed_first] if unavailable > 0 and failed_first else []
        if no_models and view.models_seen:
            starts.append(max(view.models_seen.values()))
        hit = Hit(
            endpoint,
            {"count": len(ids), "which": "that do not serve", "why": "; ".join(why)},
            evidence,
            min(starts, default=ctx.now),
            role="frontend",
            last_event=0.0 if no_models else failed_last,
        )
        answering = any(
            v.kind == "worker" and v.probe().outcome == Outcome.OK for v in ctx.health.endpoints.values()
        )
        if served > 0 or (len(ids) > 1 and answering):
            # Some listed instances serve (requests succeed since the failures began, or
            # another worker of this pod answers): part of the capacity is gone, not all.
            hit.values["which"] = "of which some do not serve"
            if served > 0:
                hit.values["why"] += f", while {served:.0f} were served"
            hit.severity = "warning"
            evidence.append(
                Evidence(
                    f'increase({ctx.names.requests_total}{{status="success"}}) since the first failure',
                    served,
                    timestamp=first_failure,
                    note="other workers of this pod answer" if answering else "",
                )
            )
        hits.append(hit)
    return hits


KEEPALIVE_LOST = ("keep_alive failed", "lease", "failed to renew")


@rule(
    id="worker_registration_lost",
    category=Category.CONNECTION_ANOMALY,
    severity=Severity.CRITICAL,
    summary="{what}: it looks healthy but serves nothing{capacity}",
    actions=(
        "Restart the worker: after a stall (SIGSTOP, long GC, node pressure) Dynamo 1.6 does not re-register on its own.",
        "Check etcd / the discovery store reachability and latency from this pod.",
        "A readiness probe on the worker's /health does not catch this: it stays 200 'ready'.",
    ),
    explains=WORKER_EFFECTS,
    thresholds=(
        Threshold(
            "unlisted_seconds",
            10.0,
            "seconds",
            "How long a worker that answers ready may be missing from the frontend's instances (no log_files needed).",
            pod_only="instance ids are compared in the pod; no metric carries them",
        ),
    ),
    alert=NoAlert(
        "Dynamo says it lost its lease only in its log lines, and the unlisted worker is found by comparing instance ids, which no metric carries. What it causes pages: DynamoFrontendNoWorkers, DynamoFrontendStaleInstances, DynamoCanaryFailing."
    ),
)
def worker_registration_lost(ctx: Context, t: Limits) -> list[Hit]:
    """From Dynamo's logs (keep-alive errors) when log_files are read; otherwise from the
    facts: a worker of this pod answers ready, yet the frontend of this pod does not list
    its instance id (the worker's `worker_id`, hex, is the frontend's decimal instance id)."""
    lost = []
    errors = ctx.logs.errors
    if errors is not None:
        lost = [
            s
            for s in errors.recent(since=ctx.now - min(ctx.window, 120.0))
            if s.level == "ERROR" and any(marker in s.message for marker in KEEPALIVE_LOST)
        ]
    unlisted = _unlisted_workers(ctx, t.unlisted_seconds)
    if not lost and not unlisted:
        return []
    evidence = [
        Evidence(f"log {s.level} {s.target}", s.message[:300], timestamp=s.last_seen, note=f"{s.count}x")
        for s in lost[:3]
    ]
    whats = []
    if lost:
        whats.append(
            f"this worker cannot keep its discovery registration ({sum(s.count for s in lost)} keep-alive errors)"
        )
    for endpoint, ids, since in unlisted:
        whats.append(
            f"{who('worker', endpoint)} answers ready, but the frontend has not listed its instance for {duration_text(ctx.now - since)}"
        )
        evidence.append(
            Evidence(
                f"{ctx.names.worker_inflight}{{worker_id}} on {endpoint}",
                ids,
                timestamp=since,
                note="as decimal: " + ", ".join(str(int(i, 16)) for i in ids),
            )
        )
    frontend = next((v for v in ctx.health.endpoints.values() if v.kind == "frontend"), None)
    if unlisted and frontend is not None:
        evidence.append(
            Evidence("instance ids the frontend's /health lists", (frontend.instance_ids or [])[:8])
        )
    starts = [s.first_seen for s in lost] + [since for _, _, since in unlisted]
    hit = Hit("discovery", {"what": "; ".join(whats)}, evidence, min(starts), role="worker")
    return [_grade_by_capacity(ctx, hit, {endpoint for endpoint, _, _ in unlisted})]


def _unlisted_workers(ctx: Context, for_seconds: float) -> list[tuple[str, list[str], float]]:
    """(endpoint, its instance ids, since when) for each worker of this pod that answers ready
    while the frontend of this pod, answering too, lists none of its instance ids."""
    frontends = [
        v for v in ctx.health.endpoints.values() if v.kind == "frontend" and v.probe().outcome == Outcome.OK
    ]
    if not frontends or any(v.instance_ids is None for v in frontends):
        return []
    listed = {i for v in frontends for i in v.instance_ids or []}
    out = []
    for endpoint, view in ctx.health.endpoints.items():
        scrape = ctx.scrapes.endpoints.get(endpoint)
        probe = view.probe()
        if view.kind != "worker" or probe.outcome != Outcome.OK or scrape is None or not scrape.worker_ids:
            continue
        try:
            decimal = {str(int(i, 16)) for i in scrape.worker_ids}
        except ValueError:
            continue  # not Dynamo's hex ids: nothing to compare
        if decimal & listed:
            continue
        since = max([probe.since, view.first_ok_at, *(v.instances_since for v in frontends)])
        if ctx.now - since >= for_seconds and not _in_startup(ctx, endpoint):
            out.append((endpoint, list(scrape.worker_ids), since))
    return out


def _notready_but_ready(view: EndpointFacts) -> bool:
    return (
        view.kind == "worker"
        and view.probe().status == "notready"
        and bool(view.endpoints)
        and all(status == "ready" for status in (view.endpoints or {}).values())
    )


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
        s(metric("endpoint_status"), 'probe="health",status="notready"')
        + " == 1 and on (namespace, pod) min by (namespace, pod) ("
        + s(metric("worker_endpoint_ready"))
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
                        f'{metric("endpoint_status")}{{endpoint="{endpoint}",probe="health",status="notready"}}',
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
    id="metrics_scrape_failing",
    category=Category.CONNECTION_ANOMALY,
    severity=Severity.WARNING,
    summary="Dynamo /metrics on {subject} cannot be scraped ({reason})",
    actions=(
        "Check the URL in the evidence answers Prometheus text; derived signals (rates, TTFT quantiles) are missing meanwhile.",
        "If the body is very large, raise max_response_bytes.",
    ),
    fleet=lambda s, t: s(metric("scrape_up")) + " == 0",
)
def metrics_scrape_failing(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for endpoint, fact in ctx.scrapes.endpoints.items():
        if fact.up:
            continue
        if ctx.health.time and ctx.health.time <= fact.failing_since:
            # A port closing (or a process stopping mid-scrape) fails the scrape first; the
            # health probe names that cause on its next look (collectors started together
            # look at the same moment), so the scrape is judged once health looked after it.
            continue
        probe = ctx.probe(endpoint)
        if probe.outcome in {Outcome.REFUSED, Outcome.TIMEOUT} or ctx.starting(endpoint):
            continue  # the endpoint itself is down, or not up yet: those findings say it
        if fact.reason in {"refused", "error"} and probe.since >= ctx.scrapes.time:
            continue  # the endpoint came back between the scrape and the probe: a restart
        view = ctx.health.endpoints.get(endpoint)
        kind = view.kind if view is not None else ""
        if view is not None and ctx.scrapes.time <= view.first_ok_at:
            continue  # the last scrape predates Dynamo's first answer: start-up, not a fault
        if ctx.drain_seen(endpoint):
            continue  # shutting down: Dynamo closes its ports on purpose
        hits.append(
            Hit(
                endpoint,
                {"reason": fact.reason, "url": fact.url},
                [
                    Evidence(f'{metric("scrape_up")}{{endpoint="{endpoint}"}}', 0),
                    Evidence("reason", fact.reason),
                    Evidence("error", fact.error),
                    Evidence("response body", fact.body_excerpt[:200]),
                ],
                ctx.now,
                role=kind,
            )
        )
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
    fleet=lambda s, t: "increase(" + s(metric("worker_restarts_total")) + f"[15m]) >= {t.restarts:g}",
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
    id="health_flapping",
    category=Category.CONNECTION_ANOMALY,
    severity=Severity.WARNING,
    summary="{subject} changed health state {count} times in {minutes:.0f} min (flapping)",
    actions=(
        "Look at the transitions in the evidence: alternating ok/timeout suggests overload or CPU throttling.",
        "Check probe timeouts against the response times in dynamo_sidecar_endpoint_response_seconds.",
    ),
    thresholds=(Threshold("transitions", 3, "transitions", "Health transitions within 5 minutes."),),
    events=True,
)
def health_flapping(ctx: Context, t: Limits) -> list[Hit]:
    window = min(ctx.window, 300.0)
    by_source: dict[str, list[Any]] = {}
    for event in ctx.state.recent_events(since=ctx.now - window, kind="health_transition"):
        if event.attributes.get("to_status") in SHUTDOWN_STATUSES:
            continue  # a drain's transitions are not flapping
        by_source.setdefault(event.source, []).append(event)
    hits = []
    for source, events in by_source.items():
        if len(events) < t.transitions:
            continue
        endpoint = source.split("/")[0]
        view = ctx.health.endpoints.get(endpoint)
        kind = view.kind if view is not None else ""
        hits.append(
            Hit(
                source,
                {"count": len(events), "minutes": window / 60},
                [Evidence("health_transition event", e.message, timestamp=e.timestamp) for e in events[-6:]],
                min(e.timestamp for e in events),
                role=kind,
                last_event=max(e.timestamp for e in events),
            )
        )
    return hits


# --- what requests see ---------------------------------------------------------------------------------


@rule(
    id="canary_failing",
    category=Category.PERFORMANCE_DEGRADATION,
    severity=Severity.CRITICAL,
    summary="canary requests for model {subject} failed {failures} times in a row ({outcome}): the model does not serve end to end",
    actions=(
        "Look up the canary's Dynamo log lines: GET /diagnose/request/<x-request-id> from the evidence (needs log_files), or search the logs for that x_request_id / trace id.",
        "timeout with healthy endpoints means a hung engine or worker: check the worker's CPU and `py-spy dump`; restart it if it never answers.",
        "http_error 503 'not ready' or 404 for a model that was listed means no live worker serves it: see the worker pods and the frontend's instance list.",
    ),
    fleet=lambda s, t: s(metric("canary_failing")) + " == 1",
    alert=Alert(
        "DynamoCanaryFailing",
        "Canary requests for {{ $labels.model }} fail end to end through {{ $labels.namespace }}/{{ $labels.pod }}",
    ),
    events=True,
)
def canary_failing(ctx: Context, t: Limits) -> list[Hit]:
    canary = ctx.components.canary
    if canary is None or ctx.draining:
        return []  # a drain stops Dynamo on purpose: what the canary sees then is not a fault
    hits = []
    for model, state in canary.models.items():
        if not state.failing or state.last is None:
            continue
        last = state.last
        evidence = [
            Evidence(
                f'{metric("canary_consecutive_failures")}{{model="{model}"}}',
                state.consecutive_failures,
                timestamp=last.timestamp,
            ),
            Evidence("last canary outcome", last.outcome, note=last.error),
            Evidence("last canary HTTP status", last.status or None),
            Evidence("last canary latency", round(last.latency, 3), unit="seconds"),
            Evidence("x-request-id", last.request_id, note="GET /diagnose/request/" + last.request_id),
            Evidence("traceparent", last.traceparent),
            Evidence("response body", last.body_excerpt[:300]),
            Evidence(
                f'{metric("canary_last_success_timestamp_seconds")}{{model="{model}"}}',
                state.last_success or None,
                unit="unix seconds",
            ),
        ]
        frontend = ctx.health.endpoints.get("frontend")
        if frontend is not None and model not in (frontend.models or []) and model in frontend.models_seen:
            evidence.append(
                Evidence(
                    "GET /v1/models",
                    "not listed",
                    timestamp=frontend.models_seen[model],
                    note="listed until then; a model leaving the list is itself a sign its workers are gone",
                )
            )
        hits.append(
            Hit(
                model,
                {"failures": state.consecutive_failures, "outcome": last.outcome},
                evidence,
                state.failing_since,
                role="frontend",
                # Requests for the model that succeed after the last failed canary say it
                # serves again before the next canary (which waits for an idle moment) does.
                last_event=last.timestamp,
                model=model,
            )
        )
    return hits


CLIENT_ERRORS = CLIENT_ERROR_TYPES
HUNG_FLEET_DEFAULT = 10.0  # engine_hung's fleet limit when its threshold is 0: two default intervals


@rule(
    id="request_failures",
    category=Category.PERFORMANCE_DEGRADATION,
    severity=Severity.WARNING,
    summary="{count:.0f} request(s) failed server-side in the last {window} ({share_text} of requests): {types}",
    actions=(
        "Look at the failure types in the evidence: unavailable / transport errors follow a worker that died or was removed; deadline_exceeded a hung or overloaded worker.",
        "A stream that fails after HTTP 200 carries the error in-band: clients that check only the status code count it as a success.",
        "Enable request migration on the frontend (--migration-limit / DYN_MIGRATION_LIMIT) so a lost worker does not fail in-flight streams.",
    ),
    thresholds=(
        Threshold("failures", 1, "requests", "Server-side failed requests within the window."),
        Threshold("window_seconds", 120, "seconds", "How far back failed requests count."),
    ),
    fleet=lambda s, t: (
        "sum by (namespace, pod) (increase("
        + s(
            "dynamo_frontend_requests_total",
            'status="error",error_type!~"' + "|".join(sorted(CLIENT_ERRORS)) + '"',
        )
        + f"[{t.window_seconds:g}s])) >= {t.failures:g}"
    ),
    alert=Alert(
        "DynamoRequestsFailing",
        "{{ $value }} Dynamo requests failed server-side on {{ $labels.namespace }}/{{ $labels.pod }}",
    ),
    events=True,
)
def request_failures(ctx: Context, t: Limits) -> list[Hit]:
    window = min(ctx.window, t.window_seconds)
    by_type: dict[str, float] = {}
    first, last = ctx.now, 0.0
    for labels, ring in ctx.state.series_matching(ctx.names.requests_total, status="error"):
        error_type = dict(labels).get("error_type", "")
        if error_type in CLIENT_ERRORS:
            continue
        points = ring.points(since=ctx.now - window, until=ctx.now)
        increase = _increase(points)
        if increase > 0:
            by_type[error_type] = by_type.get(error_type, 0.0) + increase
            # The increase is > 0, so the counter moved: both find a rise.
            first = min(first, first_rise(points))
            last = max(last, last_rise(points))
    count = sum(by_type.values())
    if count < t.failures:
        return []
    reasons: dict[str, float] = {}
    for labels, ring in ctx.state.series_matching(ctx.names.failures_total):
        increase = _increase(ring.points(since=ctx.now - window, until=ctx.now))
        if increase > 0:
            reasons[dict(labels).get("reason", "?")] = increase
    total = ctx.state.increase(ctx.names.requests_total, window, ctx.now) or count
    types = ", ".join(f"{n:.0f} {k}" for k, n in sorted(by_type.items(), key=lambda kv: -kv[1]))
    share = min(1.0, count / total) if total else 1.0
    evidence = [
        Evidence(
            f'increase({ctx.names.requests_total}{{status="error",error_type="{k}"}}[{window:.0f}s])',
            round(n, 1),
        )
        for k, n in sorted(by_type.items())
    ]
    if reasons:
        evidence.append(Evidence(f"increase({ctx.names.failures_total}[{window:.0f}s]) by reason", reasons))
    evidence.append(Evidence(f"increase({ctx.names.requests_total}[{window:.0f}s])", round(total, 1)))
    return [
        Hit(
            "requests",
            {
                "count": count,
                "window": duration_text(window),
                "rate": count / window,
                "share": share,
                "share_text": f"{share:.1%}" if share < 0.01 else f"{share:.0%}",  # 4 of 928 is not "0%"
                "types": types,
            },
            evidence,
            first,
            role="frontend",
            last_event=last,
        )
    ]


def _increase(points: list[tuple[float, float]]) -> float:
    from agent.state import counter_increase

    return counter_increase(points) if len(points) >= 2 else 0.0


@rule(
    id="engine_hung",
    category=Category.PERFORMANCE_DEGRADATION,
    severity=Severity.CRITICAL,
    summary="{inflight:.0f} request(s) in flight and no token produced for {for}: the engine is hung{capacity}",
    actions=(
        "Check the worker process: state T (stopped) or D (blocked), CPU at zero, or a stack dump (`py-spy dump --pid <pid>`).",
        "Check the GPU: XID errors, a lost GPU, or utilization stuck at 100% with no progress.",
        "Restart the worker if it does not recover: Dynamo 1.6 fails the requests with 504 after the request deadline.",
    ),
    explains=("canary_failing:*", "slo_breach:*", "latency_regression:*", "request_failures:*"),
    thresholds=(
        Threshold(
            "stalled_seconds",
            0,
            "seconds",
            "No output for this long with work in flight. 0: the config key hung_engine_after"
            f" (two collection intervals) in the pod view, {HUNG_FLEET_DEFAULT:g} s (two default"
            " intervals) in the fleet query, which knows no interval; set it to pin both.",
        ),
    ),
    fleet=lambda s, t: (
        s(metric("dynamo_stalled_seconds")) + f" >= {t.stalled_seconds or HUNG_FLEET_DEFAULT:g}"
    ),
    alert=Alert(
        "DynamoEngineHung",
        "Dynamo on {{ $labels.namespace }}/{{ $labels.pod }} holds requests in flight and has produced no token for {{ $value }}s",
        "1m",
    ),
)
def engine_hung(ctx: Context, t: Limits) -> list[Hit]:
    limit = t.stalled_seconds or ctx.config.hung_engine_after
    signals = ctx.signals
    if signals.stalled_seconds < limit or signals.stalled_inflight <= 0 or ctx.draining:
        return []
    if _engine_starting(ctx):
        return []  # a slow start: dynamo_starting says it
    hit = Hit(
        "engine",
        {"inflight": signals.stalled_inflight, "for": duration_text(signals.stalled_seconds)},
        [
            Evidence(ctx.names.inflight, signals.stalled_inflight, note="frontend or worker in-flight gauge"),
            Evidence(
                " + ".join(ctx.names.progress_counters()[:2]) + " ...",
                "unchanged",
                timestamp=signals.stalled_since,
                note=f"no first token, token or finished request for {signals.stalled_seconds:.0f}s",
            ),
        ],
        signals.stalled_since,
        role="worker",
    )
    # Work stuck on one worker of several: the others still answer; graded by what is lost.
    lost = {
        e for e, v in ctx.health.endpoints.items() if v.kind == "worker" and v.probe().outcome != Outcome.OK
    }
    return [_grade_by_capacity(ctx, hit, lost)]


# --- shutdown and the sidecar -----------------------------------------------------------------------


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
        s(metric("drain_inflight_at_end"))
        + " > 0 and on (namespace, pod) "
        + s(metric("drain_reason"), 'reason="deadline"')
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
                Evidence(
                    metric("drain_inflight_at_end"), summary.inflight_at_end, timestamp=summary.ended_at
                ),
                Evidence(metric("drain_duration_seconds"), round(summary.duration, 3), unit="seconds"),
                Evidence(f'{metric("drain_reason")}{{reason="{summary.reason}"}}', 1),
                Evidence(metric("drain_requests_failed"), summary.requests_failed),
            ],
            summary.started_at,
        )
    ]


@rule(
    id="collector_failing",
    category=Category.SIDECAR,
    severity=Severity.WARNING,
    summary="collector {subject} is failing ({failures} runs in a row): {error}",
    actions=(
        "The signals this collector provides are stale; the rest of the sidecar keeps working.",
        "See the error in the evidence; `dynamo-sidecar check-config` shows the settings it uses.",
    ),
    fleet=lambda s, t: s(metric("collector_success")) + " == 0",
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
                            f'{metric("collector_success")}{{collector="{status.name}"}}',
                            0,
                            timestamp=status.last_run_time,
                        ),
                        Evidence("consecutive failures", status.consecutive_failures),
                        Evidence("last error", status.last_error),
                        Evidence(
                            f'{metric("collector_last_success_timestamp_seconds")}{{collector="{status.name}"}}',
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
    fleet=lambda s, t: "increase(" + s(metric("series_caps_hit_total")) + "[15m]) > 0",
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
                *[
                    Evidence(f'{metric("series_dropped_total")}{{metric="{name}"}}', count)
                    for name, count in worst
                ],
                *[
                    Evidence(f'{metric("series_caps_hit_total")}{{cap="{cap}"}}', n)
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
        s(metric("memory_budget_used_bytes"))
        + f" >= {t.ratio:g} * "
        + s(metric("memory_budget_bytes"))
        + " and "
        + s(metric("memory_budget_bytes"))
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
                Evidence(metric("memory_budget_used_bytes"), used, unit="bytes"),
                Evidence(metric("memory_budget_bytes"), budget, unit="bytes"),
                Evidence(
                    "container memory limit",
                    state.memory_limit,
                    unit="bytes",
                    note="" if state.memory_limit else "unknown: the budget is memory_budget or 128Mi",
                ),
                Evidence(metric("history_bytes"), state.history_bytes, unit="bytes"),
                Evidence(metric("history_series"), state.history_kept),
                Evidence(metric("history_refused_total"), state.history_refused),
                Evidence(f'{metric("series_caps_hit_total")}{{cap="memory_budget"}}', refused),
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
    fleet=lambda s, t: "increase(" + s(metric("otlp_spans_dropped_total")) + "[15m]) > 0",
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
                Evidence(metric("otlp_export_failures_total"), status["failures"]),
                Evidence(metric("otlp_spans_dropped_total"), status["dropped"]),
                Evidence("last export error", status["last_error"]),
                Evidence("OTLP endpoint", f"{status['endpoint']} ({status['protocol']})"),
            ],
            ctx.now,
        )
    ]
