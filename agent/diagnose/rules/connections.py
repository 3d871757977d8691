"""Connections: the frontend's view of its workers, scrapes, dependencies (etcd, NATS), sockets and canaries."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from agent.core import metrics as m
from agent.core.facts import Outcome, ProcessFact
from agent.diagnose.context import SHUTDOWN_STATUSES, Context, rises
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
from agent.diagnose.rules.common import (
    OUTCOME,
    WORKER_EFFECTS,
    _after_drain,
    _first_step,
    _grade_by_capacity,
    _in_startup,
    _probe_hits,
    _steps,
)

RULES: list[Rule] = []
rule = registrar(RULES)


def _held(series: str, seconds: float) -> str:
    """PromQL: the 0/1 series has been 1 for at least `seconds` (at every sample)."""
    if seconds <= 0:
        return f"{series} == 1"
    return f"min_over_time({series}[{seconds:g}s]) == 1"


def _endpoints_of(ctx: Context, process: ProcessFact) -> set[str]:
    """The watched worker endpoints this process serves (its listening ports)."""
    return {
        endpoint
        for endpoint, view in ctx.health.endpoints.items()
        if view.kind == "worker" and urlsplit(view.url).port in process.listen_ports
    }


UNAVAILABLE_REASONS = ("transport.cannot_connect", "backend.unavailable")


STALE_WINDOW = 60.0


KEEPALIVE_LOST = ("keep_alive failed", "lease", "failed to renew")


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


STALLED_STATES = {"T", "t", "D"}


def _unread_service_port(ctx: Context, peer: str) -> bool:
    """CLOSE_WAIT on one of this pod's Dynamo ports whose process does not run (stopped, or
    blocked) or whose endpoint does not answer: the sidecar's own probes, closed on their
    timeout, that the process never accepted or read. The hang's symptom, not a leak."""
    kind = {"frontend": "frontend", "worker_system": "worker"}.get(peer)
    if kind is None or peer not in ctx.tcp.service_ports.values():
        return False
    stalled = any(p.state in STALLED_STATES for p in ctx.processes.of_role(kind))
    hung = any(v.kind == kind and v.probe().outcome == Outcome.TIMEOUT for v in ctx.health.endpoints.values())
    return stalled or hung


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
        _held(s(m.PROCESS_STATE.name, 'state=~"T|t"'), t.stopped_seconds)
        + " or "
        + _held(s(m.PROCESS_STATE.name, 'state="D"'), t.uninterruptible_seconds)
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
                    m.PROCESS_STATE.selector(pid=process.pid, state=state),
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
        + s(m.FRONTEND_INSTANCES.name)
        + " > 0 and on (namespace, pod, endpoint) "
        + s(m.FRONTEND_MODELS.name)
        + " == 0) or ("
        + s(m.FRONTEND_INSTANCES.name)
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
            Evidence(m.FRONTEND_INSTANCES.selector(endpoint=endpoint), len(ids)),
            Evidence("instance ids listed by /health", ids[:5]),
        ]
        why = []
        if no_models:
            evidence.append(Evidence(m.FRONTEND_MODELS.selector(endpoint=endpoint), 0, note="GET /v1/models"))
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


@rule(
    id="metrics_scrape_failing",
    category=Category.CONNECTION_ANOMALY,
    severity=Severity.WARNING,
    summary="Dynamo /metrics on {subject} cannot be scraped ({reason})",
    actions=(
        "Check the URL in the evidence answers Prometheus text; derived signals (rates, TTFT quantiles) are missing meanwhile.",
        "If the body is very large, raise max_response_bytes.",
    ),
    fleet=lambda s, t: s(m.SCRAPE_UP.name) + " == 0",
)
def metrics_scrape_failing(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for endpoint, fact in ctx.scrapes.endpoints.items():
        if fact.up:
            continue
        if ctx.health.time <= fact.failing_since:
            # A port closing (or a process stopping mid-scrape) fails the scrape first; the
            # health probe names that cause on its next look (collectors started together
            # look at the same moment, and at start-up health may not have looked at all),
            # so the scrape is judged once health looked after it.
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
                    Evidence(m.SCRAPE_UP.selector(endpoint=endpoint), 0),
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


@rule(
    id="dependency_unreachable",
    category=Category.CONNECTION_ANOMALY,
    severity=Severity.CRITICAL,
    summary="{subject} ({target}) {what}",
    actions=(
        "Check the dependency's pods and Service (`kubectl get pods,svc -n <ns>`); refused means nothing listens, timeout means a network policy or a dead node, dns_error means the name; unhealthy means etcd answers but has no quorum or an alarm (`etcdctl endpoint health`).",
        "Check NetworkPolicies between this namespace and the dependency's.",
        "Dynamo needs etcd for discovery and NATS for events: without them workers do not register, and a Dynamo that loses its etcd lease shuts itself down (~lease TTL later).",
    ),
    # Dynamo without etcd: instances vanish at once, and ~lease TTL later the runtime shuts
    # the processes down (ports closed, processes gone): all of it follows from the loss.
    explains=(
        "frontend_no_instances:*",
        "dynamo_not_ready:*",
        "worker_registration_lost:*",
        "frontend_stale_instances:*",
        "canary_failing:*",
        "request_failures:*",
        "endpoint_refused:*",
        "no_dynamo_process:*",
        "port_not_listening:*",
        "metrics_scrape_failing:*",
        "engine_hung:*",
    ),
    fleet=lambda s, t: s(m.PROBE_UP.name) + " == 0",
    alert=Alert(
        "DynamoDependencyUnreachable",
        "{{ $labels.role }} ({{ $labels.target }}) unreachable from {{ $labels.namespace }}/{{ $labels.pod }}",
        "1m",
    ),
)
def dependency_unreachable(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for target, probe in ctx.tcp.probes.items():
        if probe.outcome == "ok":
            continue
        since = probe.since or ctx.now
        what = (
            f"answers but reports itself unhealthy for {duration_text(ctx.now - since)}: {probe.error}"
            if probe.outcome == "unhealthy"
            else f"is unreachable from this pod for {duration_text(ctx.now - since)}: {probe.outcome}"
        )
        evidence = [
            Evidence(
                m.PROBE_OUTCOME.selector(target=target, outcome=probe.outcome),
                1,
                timestamp=since,
            ),
            Evidence("error", probe.error),
            Evidence(m.PROBE_DNS_SECONDS.selector(target=target), probe.dns_seconds, unit="seconds"),
        ]
        if probe.status:
            evidence.append(Evidence(m.PROBE_HTTP_STATUS_CODE.selector(target=target), probe.status))
        hits.append(
            Hit(probe.role, {"target": target, "outcome": probe.outcome, "what": what}, evidence, since)
        )
    return hits


@rule(
    id="dependency_slow",
    category=Category.CONNECTION_ANOMALY,
    severity=Severity.WARNING,
    summary="{subject} ({target}) answers slowly: connect {connect:.0f} ms, DNS {dns:.0f} ms",
    actions=(
        "Check the dependency's load and the node's network; slow etcd makes registration and lease renewal flap.",
        "Slow DNS: check CoreDNS and ndots in the pod's resolv.conf.",
    ),
    thresholds=(
        Threshold("connect_seconds", 0.1, "seconds", "TCP connect time that counts as slow."),
        Threshold("dns_seconds", 0.5, "seconds", "DNS resolution time that counts as slow."),
    ),
    fleet=lambda s, t: (
        s(m.PROBE_CONNECT_SECONDS.name)
        + f" >= {t.connect_seconds:g} or "
        + s(m.PROBE_DNS_SECONDS.name)
        + f" >= {t.dns_seconds:g}"
    ),
)
def dependency_slow(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for target, probe in ctx.tcp.probes.items():
        connect, dns = probe.connect_seconds, probe.dns_seconds
        if probe.outcome == "ok" and ((connect or 0) >= t.connect_seconds or (dns or 0) >= t.dns_seconds):
            hits.append(
                Hit(
                    probe.role,
                    {"target": target, "connect": (connect or 0) * 1000, "dns": (dns or 0) * 1000},
                    [
                        Evidence(m.PROBE_CONNECT_SECONDS.selector(target=target), connect, unit="seconds"),
                        Evidence(m.PROBE_DNS_SECONDS.selector(target=target), dns, unit="seconds"),
                    ],
                    ctx.now,
                )
            )
    return hits


@rule(
    id="tcp_retransmits_high",
    category=Category.CONNECTION_ANOMALY,
    severity=Severity.WARNING,
    summary="{percent:.1f}% of TCP segments are retransmitted: packet loss on the pod's network",
    actions=(
        "Look at the per-peer retransmits in the evidence to find the path; check the node's NIC errors (`ethtool -S`) and the CNI.",
        "Cross-node KV transfer and request traffic suffer first: compare TTFT with the retransmit ratio.",
    ),
    thresholds=(
        Threshold("ratio", 0.02, "ratio", "Retransmitted share of sent segments."),
        Threshold("min_segments", 1000, "segments", "Fewest segments sent in the window to judge."),
    ),
    fleet=lambda s, t: (
        s(m.TCP_RETRANSMIT_RATIO.name)
        + f" >= {t.ratio:g} and on (namespace, pod, instance) increase("
        + s(m.TCP_KERNEL_TOTAL.name, 'counter="OutSegs"')
        + f"[5m]) >= {t.min_segments:g}"
    ),
)
def tcp_retransmits_high(ctx: Context, t: Limits) -> list[Hit]:
    ratio = ctx.signals.retransmit_ratio
    kernel = m.TCP_KERNEL_TOTAL.name
    sent = ctx.state.increase(kernel, ctx.signals.window, ctx.now, counter="OutSegs") or 0
    if ratio is None or ratio < t.ratio or sent < t.min_segments:
        return []
    since = ctx.now - ctx.signals.window
    retransmitted = _steps(ctx.state, kernel, since, ctx.now, counter="RetransSegs")
    began = _first_step(
        ctx,
        _steps(ctx.state, kernel, since, ctx.now, counter="OutSegs"),
        lambda at, n, _: n > 0 and retransmitted.get(at, 0.0) / n >= t.ratio,
    )
    per_peer = {
        dict(labels).get("peer"): ring.last()[1]  # type: ignore[index]
        for labels, ring in ctx.state.series_matching(m.TCP_SOCKET_RETRANSMITS.name)
        if ring.last()
    }
    return [
        Hit(
            "pod",
            {"percent": ratio * 100},
            [
                Evidence(m.TCP_RETRANSMIT_RATIO.name, round(ratio, 4), unit="ratio"),
                Evidence(
                    f"increase({m.TCP_KERNEL_TOTAL.selector(counter='OutSegs')}[{ctx.signals.window:.0f}s])",
                    sent,
                ),
                Evidence("retransmits by peer (tcp_info)", per_peer),
            ],
            began,
        )
    ]


@rule(
    id="close_wait_leak",
    category=Category.CONNECTION_ANOMALY,
    severity=Severity.WARNING,
    summary="{count} connections to {subject} stuck in CLOSE_WAIT, {owner}: the peer closed, the owner never did (a socket leak)",
    actions=(
        "If a Dynamo process owns them, it is not closing connections its peers closed and will run out of descriptors: restart it and report the leak.",
        "If no Dynamo process owns them, another container in the pod (or, outside a pod, another program on the host) leaks them.",
        "Compare with dynamo_sidecar_process_open_fds against its limit.",
    ),
    thresholds=(Threshold("sockets", 50, "sockets", "CLOSE_WAIT sockets to one peer role."),),
    fleet=lambda s, t: (
        "sum without (direction) (" + s(m.TCP_SOCKETS.name, 'state="close_wait"') + f") >= {t.sockets:g}"
    ),
)
def close_wait_leak(ctx: Context, t: Limits) -> list[Hit]:
    owners = {p.name: p.close_wait for p in ctx.processes.readable() if p.close_wait}
    hits = []
    for peer, count in ctx.tcp.close_wait.items():
        if count < t.sockets or _unread_service_port(ctx, peer):
            continue
        if owners:
            owner = "owned by " + ", ".join(f"{name} ({n})" for name, n in sorted(owners.items()))
        else:
            owner = "owned by no Dynamo process the sidecar sees"
        hits.append(
            Hit(
                peer,
                {"count": count, "owner": owner},
                [
                    Evidence(m.TCP_SOCKETS.selector(state="close_wait", peer=peer), count),
                    Evidence("CLOSE_WAIT sockets per Dynamo process (/proc/<pid>/fd)", owners or None),
                ],
                ctx.now,
            )
        )
    return hits
