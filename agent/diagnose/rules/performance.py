"""Performance: failures, latency against the SLO and the baseline, queues and hung engines."""

from __future__ import annotations

from typing import Any

from agent.core import metrics as m
from agent.core.facts import Outcome
from agent.core.signals import (
    CLIENT_ERROR_TYPES,
    SLO_OBJECTIVES,
    bucket_text,
    slo_observations,
)
from agent.core.state import State
from agent.diagnose.context import Context, first_rise, last_rise, rises
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
)
from agent.diagnose.rules.common import (
    _engine_starting,
    _gpus,
    _grade_by_capacity,
    _rise_times,
    _steps,
    _window,
)

RULES: list[Rule] = []
rule = registrar(RULES)


CLIENT_ERRORS = CLIENT_ERROR_TYPES


HUNG_FLEET_DEFAULT = 10.0  # engine_hung's fleet limit when its threshold is 0: two default intervals


def _increase(points: list[tuple[float, float]]) -> float:
    from agent.core.state import counter_increase

    return counter_increase(points) if len(points) >= 2 else 0.0


def _above(state: State, histogram: str, bound: float, since: float, until: float) -> dict[float, float]:
    """Per collection step, the observations above `bound` (the +Inf bucket minus the largest
    bucket at or below it), all series summed."""
    bounds = set()
    for labels, _ in state.series_matching(histogram + "_bucket"):
        le = dict(labels).get("le", "")
        try:
            bounds.add(float(le))
        except ValueError:
            continue
    below = max((b for b in bounds if b <= bound), default=None)
    total = _steps(state, histogram + "_bucket", since, until, le="+Inf")
    if below is None:
        return total
    kept = _steps(state, histogram + "_bucket", since, until, le=_le_text(below, state, histogram))
    return {at: n - kept.get(at, 0.0) for at, n in total.items()}


def _le_text(bound: float, state: State, histogram: str) -> str:
    for labels, _ in state.series_matching(histogram + "_bucket"):
        le = dict(labels).get("le", "")
        try:
            if float(le) == bound:
                return le
        except ValueError:
            continue
    return repr(bound)


GPU_IDLE, GPU_BUSY = 0.3, 0.85  # queue_growing judges the band between these two rules


QUEUE_THRESHOLDS = (
    Threshold("queued", 3, "requests", "Fewest waiting requests that count as a queue."),
    Threshold(
        "ratio",
        1.0,
        "ratio",
        "Waiting requests per running one that count: a queue as long as what the engine serves means each new request waits at least a whole request.",
    ),
    Threshold(
        "for_seconds",
        30,
        "seconds",
        "How long the queue must hold at that level, every sample, before it counts (a burst's queue drains within seconds).",
    ),
)


# Time spent waiting in the queue is time to first token (and a full batch slows every
# token): a standing queue explains what the latency rules see.
QUEUE_EFFECTS = ("latency_regression:*", "slo_breach:*")


# (waiting gauge, running gauge, where): the frontend's queue, and the engines' own.
QUEUE_SOURCES = (
    ("vllm:num_requests_waiting", "vllm:num_requests_running", "engine"),
    ("sglang:num_queue_reqs", "sglang:num_running_reqs", "engine"),
)


def _queue_fleet(s: Any, t: Limits, gpu: str) -> str:
    """PromQL: a queue that held at `queued` or more and at `ratio` times what ran or more at
    every step of the last `for_seconds` (the frontend's, or an engine's waiting against its
    running), on pods whose mean GPU utilization is in the given band ("idle", "busy", or
    "between": between the two, or no GPU seen at all), the same three-way split the pod
    rules make. Judged by level and duration, as the pod rule judges it."""
    step = max(1.0, t.for_seconds / 6)
    window = f"[{t.for_seconds:g}s:{step:g}s]"

    def held(waiting: str, running: str, match: str = "") -> str:
        # 1 where both conditions hold; min_over_time over the window: held at every step.
        level = f"({waiting} >= bool {t.queued:g})"
        against = f"({waiting} >= bool {match}({t.ratio:g} * {running}))"
        return f"(min_over_time(({level} * {against}){window}) == 1)"

    queued = s(m.DYNAMO_QUEUED_REQUESTS.name)
    # The frontend's in-flight gauge counts the queued requests too.
    frontend_inflight = s(m.DYNAMO_INFLIGHT_REQUESTS.name, 'source="frontend"')
    frontend_running = f"({frontend_inflight} - ignoring(source) {queued})"
    standing = " or ".join(
        [
            held(queued, frontend_running, "ignoring(source) "),
            *(held(s(waiting), s(running)) for waiting, running, _ in QUEUE_SOURCES),
        ]
    )
    standing = f"({standing})"
    gpus = s(m.GPU_UTILIZATION_RATIO.name, 'kind="gpu"')
    utilization = f"avg by (namespace, pod) ({gpus})"
    idle = t.overrides.get("queue_growing_gpu_idle.idle", GPU_IDLE)
    busy = t.overrides.get("queue_growing_saturated.busy", GPU_BUSY)
    if gpu == "idle":
        return f"{standing} and on (namespace, pod) {utilization} < {t.get('idle', idle):g}"
    if gpu == "busy":
        return f"{standing} and on (namespace, pod) {utilization} >= {t.get('busy', busy):g}"
    return (
        f"({standing} and on (namespace, pod) ({utilization} >= {idle:g} < {busy:g}))"
        f" or ({standing} unless on (namespace, pod) {utilization})"
    )


def _queue_run(
    queued: list[tuple[float, float]], running: dict[float, float], t: Limits
) -> tuple[float, float, float] | None:
    """(since, fewest queued, running now) of the run of samples, ending with the latest,
    in which the queue held at `queued` or more and at `ratio` times what ran or more."""
    since, least = None, float("inf")
    for at, value in reversed(queued):
        if value < max(t.queued, t.ratio * running.get(at, 0.0)):
            break
        since, least = at, min(least, value)
    if since is None:
        return None
    return since, least, running.get(queued[-1][0], 0.0)


def _standing_queue(ctx: Context, t: Limits) -> dict[str, Any] | None:
    """The longest-standing queue against capacity: the frontend's queued requests against
    the requests it has in flight beyond them, or an engine's waiting against its running
    requests, held at its level for `for_seconds` at every sample. Judged by level and
    duration, not growth: a queue already there when the history starts counts, and a
    burst's momentary queue does not."""
    window = max(_window(ctx), t.for_seconds + ctx.config.dynamo_interval)
    sources = [(ctx.names.queued, ctx.names.inflight, "frontend"), *QUEUE_SOURCES]
    best: dict[str, Any] | None = None
    for waiting, ran, where in sources:
        for labels, _ in ctx.state.series_matching(waiting):
            points = ctx.state.series_points(waiting, labels, window, ctx.now)
            if not points:
                continue
            running = dict(ctx.state.series_points(ran, labels, window, ctx.now))
            if where == "frontend":  # the frontend's in-flight gauge counts the queued ones too
                queued_at = dict(points)
                running = {at: max(0.0, value - queued_at.get(at, 0.0)) for at, value in running.items()}
            run = _queue_run(points, running, t)
            if run is None or ctx.now - run[0] < t.for_seconds:
                continue
            since, least, now_running = run
            if best is None or ctx.now - since > ctx.now - best["since"]:
                best = {
                    "queued": points[-1][1],
                    "least": least,
                    "running": now_running,
                    "since": since,
                    "for": duration_text(ctx.now - since),
                    "where": "frontend" if where == "frontend" else f"engine ({waiting})",
                    "about": "frontend" if where == "frontend" else "engine",
                    "series": waiting,
                    "running_series": ran,
                }
    return best


def _mean_gpu_utilization(ctx: Context) -> float | None:
    values = [g.utilization for g in _gpus(ctx).values() if g.utilization is not None]
    return sum(values) / len(values) if values else None


def _queue_hit(ctx: Context, queue: dict[str, Any], gpu_busy: float | None, **values: Any) -> list[Hit]:
    role = "frontend" if queue["about"] == "frontend" else "worker"
    return [
        Hit(
            queue["about"],
            {**queue, **values},
            _queue_evidence(ctx, queue, gpu_busy),
            queue["since"],
            role=role,
        )
    ]


def _queue_evidence(ctx: Context, queue: dict[str, Any], utilization: float | None) -> list[Evidence]:
    ttft = ctx.signals.latency.get(("ttft", 0.99))
    return [
        Evidence(
            queue["series"],
            queue["queued"],
            timestamp=queue["since"],
            note=f"at least {queue['least']:.0f} at every sample for {queue['for']}",
        ),
        Evidence(
            queue["running_series"] + (" - queued" if queue["about"] == "frontend" else ""),
            queue["running"],
            note="requests being served now",
        ),
        Evidence(
            "frontend TTFT p99 over the signal window",
            None if ttft is None else round(ttft, 3),
            unit="seconds",
        ),
        Evidence(
            f"avg({m.GPU_UTILIZATION_RATIO.selector(kind='gpu')})",
            None if utilization is None else round(utilization, 3),
            unit="ratio",
            note="no GPU visible to the sidecar" if utilization is None else "",
        ),
        Evidence(m.DYNAMO_REQUEST_RATE.name, ctx.signals.request_rate, unit="requests/s"),
    ]


QUEUE_LEAD = (
    "{queued:.0f} requests queue at the {where}, at least {least:.0f} for {for} with {running:.0f} running"
)


LATENCY = m.DYNAMO_LATENCY_SECONDS.name


def _count(buckets: list[tuple[float, float]]) -> float:
    return buckets[-1][1] if buckets else 0.0


def _slo_rises(ctx: Context, objective: str, target: float, window: float) -> tuple[float, float]:
    since = ctx.now - window
    if objective == "error_rate":
        return rises(
            ctx.state.series_matching(ctx.names.requests_total, status="error"),
            since,
            ctx.now,
            lambda labels: labels.get("error_type", "") not in CLIENT_ERROR_TYPES,
        )
    histogram = ctx.names.latency_histograms()["ttft" if objective == "ttft_p99" else "itl"]
    return _rise_times(_above(ctx.state, histogram, target, since, ctx.now))


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
    fleet=lambda s, t: s(m.CANARY_FAILING.name) + " == 1",
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
                m.CANARY_CONSECUTIVE_FAILURES.selector(model=model),
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
                m.CANARY_LAST_SUCCESS_TIMESTAMP_SECONDS.selector(model=model),
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
    fleet=lambda s, t: s(m.DYNAMO_STALLED_SECONDS.name) + f" >= {t.stalled_seconds or HUNG_FLEET_DEFAULT:g}",
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


@rule(
    id="queue_growing_gpu_idle",
    category=Category.PERFORMANCE_DEGRADATION,
    severity=Severity.WARNING,
    summary=QUEUE_LEAD
    + ", while the GPUs are {utilization:.0f}% busy: a scheduling or routing problem, not capacity",
    actions=(
        "Check the router: are requests going to a worker that does not serve (stale instance), or is one worker hot while others idle?",
        "Check worker health and canaries; compare per-worker in-flight (dynamo_component_inflight_requests).",
    ),
    explains=QUEUE_EFFECTS,
    thresholds=(
        *QUEUE_THRESHOLDS,
        Threshold("idle", GPU_IDLE, "ratio", "Mean GPU utilization below which GPUs count as idle."),
    ),
    fleet=lambda s, t: _queue_fleet(s, t, "idle"),
    alert=Alert(
        "DynamoQueueGrowingGPUIdle",
        "Requests queue at {{ $labels.namespace }}/{{ $labels.pod }} while its GPUs are idle: scheduling or routing, not capacity",
        "5m",
    ),
)
def queue_growing_gpu_idle(ctx: Context, t: Limits) -> list[Hit]:
    queue = _standing_queue(ctx, t)
    utilization = _mean_gpu_utilization(ctx)
    if not queue or utilization is None or utilization >= t.idle:
        return []
    return _queue_hit(ctx, queue, utilization, utilization=utilization * 100)


@rule(
    id="queue_growing_saturated",
    category=Category.PERFORMANCE_DEGRADATION,
    severity=Severity.WARNING,
    summary=QUEUE_LEAD + ", with the GPUs {utilization:.0f}% busy: out of capacity",
    actions=(
        "Scale out workers (or the planner's limits); lower max_tokens or concurrency at the client side meanwhile.",
    ),
    explains=QUEUE_EFFECTS,
    thresholds=(
        *QUEUE_THRESHOLDS,
        Threshold("busy", GPU_BUSY, "ratio", "Mean GPU utilization that counts as saturated."),
    ),
    fleet=lambda s, t: _queue_fleet(s, t, "busy"),
    alert=Alert(
        "DynamoQueueGrowingSaturated",
        "Requests queue at {{ $labels.namespace }}/{{ $labels.pod }} with its GPUs saturated: out of capacity",
        "5m",
    ),
)
def queue_growing_saturated(ctx: Context, t: Limits) -> list[Hit]:
    queue = _standing_queue(ctx, t)
    utilization = _mean_gpu_utilization(ctx)
    if not queue or utilization is None or utilization < t.busy:
        return []
    return _queue_hit(ctx, queue, utilization, utilization=utilization * 100)


@rule(
    id="queue_growing",
    category=Category.PERFORMANCE_DEGRADATION,
    severity=Severity.WARNING,
    summary=QUEUE_LEAD + ": more requests arrive than the engine serves; {gpu}",
    actions=(
        "Compare the request rate with what the workers finish (dynamo_component_requests_total): more arriving than finishing is capacity (scale out, or lower the client's concurrency); nothing finishing is a stall.",
        "Raise the engine's batch limit (--max-num-seqs) if its KV cache has room; check worker health and canaries if the workers are not busy.",
    ),
    explains=QUEUE_EFFECTS,
    thresholds=QUEUE_THRESHOLDS,
    fleet=lambda s, t: _queue_fleet(s, t, "between"),
    alert=Alert(
        "DynamoQueueGrowing",
        "Requests queue at {{ $labels.namespace }}/{{ $labels.pod }} ({{ $value }} and growing)",
        "5m",
    ),
)
def queue_growing(ctx: Context, t: Limits) -> list[Hit]:
    """A standing queue where GPU data cannot say whether it is capacity or a stall. (The
    name is kept from when growth was the test: operators' thresholds `queue_growing.*`,
    README's demo table and the bench name it.)"""
    queue = _standing_queue(ctx, t)
    utilization = _mean_gpu_utilization(ctx)
    # The band the two GPU-aware rules leave, with their thresholds as configured.
    idle = ctx.config.thresholds.get("queue_growing_gpu_idle.idle", GPU_IDLE)
    busy = ctx.config.thresholds.get("queue_growing_saturated.busy", GPU_BUSY)
    if not queue or (utilization is not None and (utilization < idle or utilization >= busy)):
        return []
    gpu = (
        "no GPU is visible to the sidecar, so capacity cannot be told apart from a slow engine"
        if utilization is None
        else f"the GPUs are {utilization * 100:.0f}% busy"
    )
    return _queue_hit(ctx, queue, utilization, gpu=gpu)


@rule(
    id="latency_regression",
    category=Category.PERFORMANCE_DEGRADATION,
    severity=Severity.WARNING,
    summary="{subject} p99 is {recent}, {factor:.1f}x this pod's own earlier {baseline}",
    actions=(
        "Look at what changed in the window: queue depth, GPU throttling, CPU throttling, retransmits (see the other findings).",
        "Compare with other pods: one pod is a node problem, all pods is load or a rollout.",
    ),
    thresholds=(
        Threshold("factor", 2.0, "ratio", "Recent p99 over the baseline p99."),
        Threshold("min_delta", 0.05, "seconds", "Smallest absolute rise that counts."),
        Threshold(
            "min_observations",
            10,
            "observations",
            "Fewest observations in each of the two windows.",
            pod_only="the fleet query compares p99 gauges, which carry no observation count",
        ),
    ),
    fleet=lambda s, t: (
        "("
        + s(LATENCY, 'signal=~"ttft|queue|itl",percentile="p99"')
        + f" >= {t.factor:g} * avg_over_time("
        + s(LATENCY, 'signal=~"ttft|queue|itl",percentile="p99"')
        + "[10m] offset 5m)) and ("
        + s(LATENCY, 'signal=~"ttft|queue|itl",percentile="p99"')
        + " - avg_over_time("
        + s(LATENCY, 'signal=~"ttft|queue|itl",percentile="p99"')
        + f"[10m] offset 5m) >= {t.min_delta:g})"
    ),
    alert=Alert(
        "DynamoLatencyRegression",
        "{{ $labels.signal }} p99 on {{ $labels.namespace }}/{{ $labels.pod }} is more than twice its own baseline",
        "10m",
    ),
)
def latency_regression(ctx: Context, t: Limits) -> list[Hit]:
    """Recent p99 against the pod's own earlier p99. The windows adapt to the history there
    is, so a pod that regresses in its first minutes is compared with its first minute."""
    hits = []
    histograms = ctx.names.latency_histograms()
    history = max(0.0, ctx.now - ctx.state.started)
    recent_window = min(_window(ctx), max(30.0, history / 2))
    baseline_window = min(2 * ctx.config.signal_window, max(30.0, history - recent_window))
    for signal in ("ttft", "queue", "itl"):
        name = histograms[signal]
        recent_buckets = ctx.state.window_buckets(name, recent_window, ctx.now)
        base_buckets = ctx.state.window_buckets(name, baseline_window, ctx.now - recent_window)
        if _count(recent_buckets) < t.min_observations or _count(base_buckets) < t.min_observations:
            continue
        from agent.core.state import histogram_quantile

        recent = histogram_quantile(0.99, recent_buckets)
        baseline = histogram_quantile(0.99, base_buckets)
        if recent is None or baseline is None or baseline <= 0:
            continue
        if recent >= t.factor * baseline and recent - baseline >= t.min_delta:
            hits.append(
                Hit(
                    signal,
                    {
                        "recent": bucket_text(recent, recent_buckets),
                        "baseline": bucket_text(baseline, base_buckets),
                        "factor": recent / baseline,
                    },
                    [
                        Evidence(
                            f"histogram_quantile(0.99, {name}) over the last {recent_window:.0f}s",
                            round(recent, 4),
                            unit="seconds",
                            note=bucket_text(recent, recent_buckets),
                        ),
                        Evidence(
                            f"the same over the {baseline_window:.0f}s before",
                            round(baseline, 4),
                            unit="seconds",
                            note=bucket_text(baseline, base_buckets),
                        ),
                        Evidence(m.DYNAMO_REQUEST_RATE.name, ctx.signals.request_rate, unit="requests/s"),
                        Evidence(m.DYNAMO_QUEUED_REQUESTS.name, ctx.signals.queued),
                    ],
                    _rise_times(_above(ctx.state, name, baseline, ctx.now - recent_window, ctx.now))[0]
                    or ctx.now,
                    role="frontend",
                )
            )
    return hits


@rule(
    id="slo_breach",
    category=Category.PERFORMANCE_DEGRADATION,
    severity=Severity.WARNING,
    summary="{objective} is {observed} against an SLO target of {target} over the last {window}",
    actions=(
        "Look at the other findings for the cause (queue growth, a hung or slow worker, throttling); with none, the pod is over capacity for this SLO: scale out.",
        "The targets are the sidecar's slo_ttft_p99 / slo_itl_p99 / slo_error_rate, set as Dynamo's SLA planner takes them.",
    ),
    thresholds=(
        Threshold("min_observations", 10, "observations", "Fewest observations in the window to judge."),
    ),
    fleet=lambda s, t: (
        s(m.SLO_OBSERVED.name)
        + " > ignoring(window) "
        + s(m.SLO_TARGET.name)
        + " > 0 and on (namespace, pod, objective) "
        + s(m.SLO_OBSERVATIONS.name)
        + f" >= {t.min_observations:g}"
    ),
    alert=Alert(
        "DynamoSLOBreach",
        "{{ $labels.objective }} on {{ $labels.namespace }}/{{ $labels.pod }} is over its SLO target",
        "5m",
    ),
    events=True,
)
def slo_breach(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    window = _window(ctx)
    for objective, observation in slo_observations(ctx.state, ctx.names, ctx.config, window, ctx.now).items():
        if observation.count < t.min_observations or observation.value <= observation.target:
            continue
        unit = SLO_OBJECTIVES[objective]
        if unit == "ratio":
            observed, target = f"{observation.value:.1%}", f"{observation.target:.1%}"
        else:
            observed = observation.text
            target = f"{observation.target * 1000:.0f} ms"
        # From the first observation over the target to the last: once the pod serves after
        # the last, the breach is a past event, whatever the window's quantile still says.
        first, last = _slo_rises(ctx, objective, observation.target, window)
        hits.append(
            Hit(
                objective,
                {
                    "objective": objective,
                    "observed": observed,
                    "target": target,
                    "window": duration_text(window),
                },
                [
                    Evidence(
                        m.SLO_OBSERVED.selector(objective=objective),
                        round(observation.value, 4),
                        unit=unit,
                        note=observation.text,
                    ),
                    Evidence(m.SLO_TARGET.selector(objective=objective), observation.target, unit=unit),
                    Evidence("observations in the window", observation.count),
                ],
                first or ctx.now,
                role="frontend",
                last_event=last,
            )
        )
    return hits


@rule(
    id="rejections_rising",
    category=Category.PERFORMANCE_DEGRADATION,
    severity=Severity.WARNING,
    summary="Dynamo is rejecting {rate:.2f} requests/s: engine in-flight limit and queue are full",
    actions=("Scale out workers, or raise --dynamo-request-queue-limit if bursts are short.",),
    fleet=lambda s, t: s(m.DYNAMO_REJECTION_RATE.name) + " > 0",
    events=True,
)
def rejections_rising(ctx: Context, t: Limits) -> list[Hit]:
    rate = ctx.signals.rejection_rate
    if not rate:
        return []
    since = ctx.now - ctx.signals.window
    first, last = 0.0, 0.0
    for name in (ctx.names.worker_rejections_total, ctx.names.frontend_rejections_total):
        began, ended = _rise_times(_steps(ctx.state, name, since, ctx.now))
        if began:
            first, last = min(first or began, began), max(last, ended)
    return [
        Hit(
            "dynamo",
            {"rate": rate},
            [
                Evidence(m.DYNAMO_REJECTION_RATE.name, round(rate, 4), unit="requests/s"),
                Evidence(m.DYNAMO_QUEUED_REQUESTS.name, ctx.signals.queued),
            ],
            first or ctx.now,
            last_event=last,
        )
    ]


@rule(
    id="migrations_rising",
    category=Category.PERFORMANCE_DEGRADATION,
    severity=Severity.INFO,
    summary="{what}",
    actions=(
        "Migrations follow worker failures: look for worker restarts, hung workers and XIDs in the same window.",
        "With migration_limit 0 a worker loss fails every in-flight stream: set --migration-limit / DYN_MIGRATION_LIMIT on the frontend.",
    ),
)
def migrations_rising(ctx: Context, t: Limits) -> list[Hit]:
    window = _window(ctx)
    migrated = failed = 0.0
    for labels, ring in ctx.state.series_matching(ctx.names.migrations_total):
        points = ring.points(since=ctx.now - window, until=ctx.now)
        if len(points) < 2:
            continue
        from agent.core.state import counter_increase

        increase = counter_increase(points)
        if dict(labels).get("outcome") in {"failure", "failed", "error"}:
            failed += increase
        else:
            migrated += increase
    if not migrated and not failed:
        return []
    limits = [s.value for s in ctx.state.find(ctx.names.migration_limit)]
    limit = max(limits) if limits else None
    if limit == 0 or (failed and not migrated):
        what = f"{migrated + failed:.0f} request(s) lost their worker and could not be migrated" + (
            " (migration is off: migration_limit 0)" if limit == 0 else ""
        )
    else:
        what = f"{migrated:.0f} request(s) were migrated to another worker after a worker failure" + (
            f", {failed:.0f} could not be" if failed else ""
        )
    return [
        Hit(
            "dynamo",
            {"what": what},
            [
                Evidence(
                    f"increase({ctx.names.migrations_total}[{window:.0f}s])",
                    {"migrated": migrated, "failed": failed},
                ),
                Evidence(ctx.names.migration_limit, limit),
            ],
            _rise_times(_steps(ctx.state, ctx.names.migrations_total, ctx.now - window, ctx.now))[0]
            or ctx.now,
            role="frontend",
        )
    ]
