"""The rule catalogue, part two: resources, GPUs, the network and performance: where the
bottleneck is (CPU, memory, GPU, network) once the endpoints themselves answer. Each rule is
one record over its predicate (see agent/diagnose/rules.py)."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

from agent.catalogue import metric
from agent.diagnose.context import Context, rises
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
from agent.facts import GpuFact, Outcome
from agent.signals import CLIENT_ERROR_TYPES, SLO_OBJECTIVES, bucket_text, slo_observations
from agent.state import State
from collectors.gpu import xid_class

SYSTEM_RULES: list[Rule] = []
rule = registrar(SYSTEM_RULES)


def _window(ctx: Context) -> float:
    """ "Now" for rules over rates: the signal window (default five minutes)."""
    return min(ctx.window, ctx.config.signal_window)


# --- when a windowed condition began: the first collection step over the threshold, not the
# window's start (agent/diagnose/lifecycle.py keeps the earliest across evaluations) ---------


def _steps(state: State, name: str, since: float, until: float, **labels: str) -> dict[float, float]:
    """The matching counters' summed increase per collection step, by the step's end time
    (every series of one collector run shares its timestamp)."""
    out: dict[float, float] = {}
    for _, ring in state.series_matching(name, **labels):
        for (_, before), (at, after) in pairwise(ring.points(since=since, until=until)):
            out[at] = out.get(at, 0.0) + (after - before if after >= before else after)
    return out


def _first_step(
    ctx: Context, steps: dict[float, float], over: Callable[[float, float, float], bool]
) -> float:
    """The end of the first step in the window where `over(at, increase, seconds)` holds;
    now when none does (the lifecycle then dates the finding by its first evaluation)."""
    times = sorted(steps)
    for before, at in pairwise(times):
        if over(at, steps[at], at - before):
            return at
    return ctx.now


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


def _rise_times(steps: dict[float, float]) -> tuple[float, float]:
    """(first, last) step end with an increase; 0s when none."""
    moved = sorted(at for at, n in steps.items() if n > 0)
    return (moved[0], moved[-1]) if moved else (0.0, 0.0)


# --- resource pressure -------------------------------------------------------------------


@rule(
    id="cpu_throttled",
    category=Category.RESOURCE_PRESSURE,
    severity=Severity.WARNING,
    summary="the container is CPU-throttled in {ratio:.0f}% of scheduling periods",
    actions=(
        "Raise the container's CPU limit (or remove it and keep the request): throttling stalls the frontend's event loop and the tokenizer.",
        "Check dynamo_frontend_event_loop_stall_total and TTFT in the same window.",
    ),
    thresholds=(
        Threshold("ratio", 0.25, "ratio", "Share of CFS periods throttled."),
        Threshold("min_periods", 10, "periods", "Fewest CFS periods in the window to judge."),
    ),
    fleet=lambda s, t: (
        "increase("
        + s(metric("cgroup_cpu_throttled_periods_total"))
        + "[5m]) / increase("
        + s(metric("cgroup_cpu_periods_total"))
        + f"[5m]) > {t.ratio:g} and increase("
        + s(metric("cgroup_cpu_periods_total"))
        + f"[5m]) >= {t.min_periods:g}"
    ),
)
def cpu_throttled(ctx: Context, t: Limits) -> list[Hit]:
    window = _window(ctx)
    periods = ctx.state.increase(metric("cgroup_cpu_periods_total"), window, ctx.now)
    throttled = ctx.state.increase(metric("cgroup_cpu_throttled_periods_total"), window, ctx.now)
    if not periods or throttled is None or periods < t.min_periods:
        return []
    ratio = throttled / periods
    if ratio <= t.ratio:
        return []
    since = ctx.now - window
    throttled_steps = _steps(ctx.state, metric("cgroup_cpu_throttled_periods_total"), since, ctx.now)
    began = _first_step(
        ctx,
        _steps(ctx.state, metric("cgroup_cpu_periods_total"), since, ctx.now),
        lambda at, n, _: n > 0 and throttled_steps.get(at, 0.0) / n > t.ratio,
    )
    return [
        Hit(
            "cgroup",
            {"ratio": ratio * 100},
            [
                Evidence(
                    f"increase({metric('cgroup_cpu_throttled_periods_total')}[{window:.0f}s]) / increase({metric('cgroup_cpu_periods_total')})",
                    round(ratio, 3),
                    unit="ratio",
                ),
                Evidence(
                    metric("cgroup_cpu_limit_cores"),
                    ctx.state.value(metric("cgroup_cpu_limit_cores")),
                    unit="cores",
                ),
            ],
            began,
        )
    ]


@rule(
    id="cpu_saturated",
    category=Category.RESOURCE_PRESSURE,
    severity=Severity.WARNING,
    summary="process {subject} uses {cores:.2f} cores of a {limit:.2f}-core limit",
    actions=(
        "Raise the CPU limit, or add replicas: a saturated frontend queues requests before any GPU sees them.",
    ),
    thresholds=(Threshold("share", 0.9, "ratio", "CPU use as a share of the cgroup's limit."),),
)
def cpu_saturated(ctx: Context, t: Limits) -> list[Hit]:
    window = _window(ctx)
    limit = ctx.state.value(metric("cgroup_cpu_limit_cores"))
    if not limit:
        return []  # no CPU limit: nothing to saturate against
    hits = []
    for process in ctx.processes.readable():
        rate = ctx.state.rate(metric("process_cpu_seconds_total"), window, ctx.now, pid=str(process.pid))
        if rate is None or rate < t.share * limit:
            continue
        steps = _steps(
            ctx.state, metric("process_cpu_seconds_total"), ctx.now - window, ctx.now, pid=str(process.pid)
        )
        began = _first_step(ctx, steps, lambda at, n, seconds: seconds > 0 and n / seconds >= t.share * limit)
        hits.append(
            Hit(
                process.name,
                {"cores": rate, "limit": limit},
                [
                    Evidence(
                        f'rate({metric("process_cpu_seconds_total")}{{pid="{process.pid}"}}[{window:.0f}s])',
                        round(rate, 3),
                        unit="cores",
                    ),
                    Evidence(metric("cgroup_cpu_limit_cores"), limit, unit="cores"),
                ],
                began,
                role=process.role,
            )
        )
    return hits


@rule(
    id="memory_near_limit",
    category=Category.RESOURCE_PRESSURE,
    severity=Severity.WARNING,
    summary="the container uses {percent:.0f}% of its memory limit",
    actions=(
        "Raise the memory limit before the kernel OOM-kills the process; check for growth in dynamo_sidecar_process_resident_memory_bytes.",
    ),
    thresholds=(Threshold("share", 0.9, "ratio", "Memory usage as a share of the limit."),),
    fleet=lambda s, t: (
        s(metric("cgroup_memory_usage_bytes"))
        + " / "
        + s(metric("cgroup_memory_limit_bytes"))
        + f" >= {t.share:g}"
    ),
)
def memory_near_limit(ctx: Context, t: Limits) -> list[Hit]:
    usage = ctx.state.value(metric("cgroup_memory_usage_bytes"))
    limit = ctx.state.value(metric("cgroup_memory_limit_bytes"))
    if not usage or not limit or usage / limit < t.share:
        return []
    return [
        Hit(
            "cgroup",
            {"percent": usage / limit * 100},
            [
                Evidence(metric("cgroup_memory_usage_bytes"), int(usage), unit="bytes"),
                Evidence(metric("cgroup_memory_limit_bytes"), int(limit), unit="bytes"),
            ],
            ctx.now,
        )
    ]


@rule(
    id="oom_killed",
    category=Category.RESOURCE_PRESSURE,
    severity=Severity.CRITICAL,
    summary="the kernel OOM-killed {count:.0f} process(es) in the container",
    actions=(
        "Raise the memory limit; `kubectl describe pod` shows OOMKilled as the last state.",
        "Large prompts and long contexts raise tokenizer and frontend memory: check input sequence lengths.",
    ),
    explains=("endpoint_refused:*", "no_dynamo_process:*", "worker_restarted:*", "request_failures:*"),
    fleet=lambda s, t: (
        "increase(" + s(metric("cgroup_memory_events_total"), 'event="oom_kill"') + "[15m]) > 0"
    ),
    alert=Alert(
        "DynamoOOMKilled", "The kernel OOM-killed a process in {{ $labels.namespace }}/{{ $labels.pod }}"
    ),
    events=True,
)
def oom_killed(ctx: Context, t: Limits) -> list[Hit]:
    series = metric("cgroup_memory_events_total")
    increase = ctx.state.increase(series, ctx.window, ctx.now, event="oom_kill")
    if not increase:
        return []
    first, last = _rise_times(_steps(ctx.state, series, ctx.now - ctx.window, ctx.now, event="oom_kill"))
    return [
        Hit(
            "cgroup",
            {"count": increase},
            [
                Evidence(f'increase({series}{{event="oom_kill"}}[{ctx.window:.0f}s])', increase),
                Evidence(
                    metric("cgroup_memory_limit_bytes"),
                    ctx.state.value(metric("cgroup_memory_limit_bytes")),
                    unit="bytes",
                ),
            ],
            first or ctx.now,
            last_event=last,
        )
    ]


@rule(
    id="memory_pressure",
    category=Category.RESOURCE_PRESSURE,
    severity=Severity.WARNING,
    summary="tasks stalled on memory {percent:.0f}% of the last minute ({subject} PSI)",
    actions=(
        "Memory is being reclaimed under pressure: raise the limit or move the pod; on host scope, the node is overcommitted.",
    ),
    thresholds=(Threshold("stall", 0.1, "ratio", "PSI memory 'some' share over 60 s."),),
    fleet=lambda s, t: (
        s(metric("pressure_stall_ratio"), 'resource="memory",kind="some",window="60s"') + f" >= {t.stall:g}"
    ),
)
def memory_pressure(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    series = metric("pressure_stall_ratio")
    for scope in ("cgroup", "host"):
        stall = ctx.state.value(series, scope=scope, resource="memory", kind="some", window="60s")
        if stall is not None and stall >= t.stall:
            hits.append(
                Hit(
                    scope,
                    {"percent": stall * 100},
                    [
                        Evidence(
                            f'{series}{{scope="{scope}",resource="memory",kind="some",window="60s"}}',
                            round(stall, 4),
                            unit="ratio",
                        ),
                        Evidence(
                            metric("cgroup_memory_usage_bytes"),
                            ctx.state.value(metric("cgroup_memory_usage_bytes")),
                            unit="bytes",
                        ),
                    ],
                    ctx.now,
                )
            )
    return hits


@rule(
    id="fd_exhaustion",
    category=Category.RESOURCE_PRESSURE,
    severity=Severity.CRITICAL,
    summary="process {subject} has {fds} of {limit} file descriptors open",
    actions=("Raise RLIMIT_NOFILE for the container, and look for a connection leak (close_wait_leak).",),
    thresholds=(Threshold("share", 0.9, "ratio", "Open fds as a share of RLIMIT_NOFILE."),),
    fleet=lambda s, t: (
        s(metric("process_open_fds")) + " / " + s(metric("process_max_fds")) + f" >= {t.share:g}"
    ),
    alert=Alert(
        "DynamoFdExhaustion",
        "Process {{ $labels.process }} in {{ $labels.namespace }}/{{ $labels.pod }} has used {{ $value | humanizePercentage }} of its file descriptors",
        "5m",
    ),
)
def fd_exhaustion(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for process in ctx.processes.readable():
        fds, limit = process.open_fds, process.max_fds
        if fds and limit and fds / limit >= t.share:
            hits.append(
                Hit(
                    process.name,
                    {"fds": fds, "limit": limit},
                    [
                        Evidence(f'{metric("process_open_fds")}{{pid="{process.pid}"}}', fds),
                        Evidence(f'{metric("process_max_fds")}{{pid="{process.pid}"}}', limit),
                    ],
                    ctx.now,
                    role=process.role,
                )
            )
    return hits


# --- GPU -----------------------------------------------------------------------------------


def _gpus(ctx: Context) -> dict[str, GpuFact]:
    return ctx.gpus.gpus


@rule(
    id="gpu_xid",
    category=Category.GPU_FAULT,
    severity=Severity.CRITICAL,
    summary="{subject}: XID {xids} ({klass}): {description}",
    actions=(
        "XID 79 (fallen off the bus), 48/95 (uncorrectable ECC), 119 (GSP timeout): cordon and drain the node (`kubectl cordon <node>`), then reset the GPU or reboot.",
        "XID 13/31/43 are usually the application: check the engine's logs around the timestamp.",
        "XID 94: a contained ECC error; only the affected process needs a restart.",
    ),
    explains=("engine_hung:*", "canary_failing:*", "request_failures:*"),
    fleet=lambda s, t: "increase(" + s(metric("gpu_xid_errors_total")) + "[15m]) > 0",
    alert=Alert(
        "DynamoGPUXid",
        "XID {{ $labels.xid }} on GPU {{ $labels.gpu }} of {{ $labels.namespace }}/{{ $labels.pod }}",
    ),
    events=True,
)
def gpu_xid(ctx: Context, t: Limits) -> list[Hit]:
    by_gpu: dict[str, list[Any]] = {}
    for event in ctx.events("gpu_xid"):
        by_gpu.setdefault(event.source, []).append(event)
    hits = []
    for source, events in by_gpu.items():
        last = events[-1].attributes
        klass, description = xid_class(int(last["xid"]))
        xids = sorted({int(e.attributes["xid"]) for e in events})
        hits.append(
            Hit(
                source,
                {
                    "xids": ", ".join(map(str, xids)),
                    "klass": klass,
                    "description": description,
                    "count": len(events),
                },
                [
                    Evidence(
                        f'{metric("gpu_xid_errors_total")}{{gpu="{last["gpu"]}"}}',
                        len(events),
                        timestamp=events[-1].timestamp,
                    ),
                    *[
                        Evidence(
                            f"XID {e.attributes['xid']} ({e.attributes['class']})",
                            e.message,
                            timestamp=e.timestamp,
                        )
                        for e in events[-5:]
                    ],
                    Evidence("uuid", last.get("uuid")),
                ],
                min(e.timestamp for e in events),
                role="worker",
                last_event=max(e.timestamp for e in events),
            )
        )
    return hits


@rule(
    id="gpu_lost",
    category=Category.GPU_FAULT,
    severity=Severity.CRITICAL,
    summary="{subject} is lost: NVML cannot reach it",
    actions=(
        "Cordon the node and reset the GPU (`nvidia-smi -r`) or reboot; look for XID 79 in the kernel log (`dmesg`).",
    ),
    explains=("gpu_xid:*", "engine_hung:*", "canary_failing:*", "request_failures:*"),
    fleet=lambda s, t: s(metric("gpu_lost")) + " == 1",
    alert=Alert(
        "DynamoGPULost", "GPU {{ $labels.gpu }} of {{ $labels.namespace }}/{{ $labels.pod }} is lost"
    ),
)
def gpu_lost(ctx: Context, t: Limits) -> list[Hit]:
    return [
        Hit(
            f"gpu{index}",
            {},
            [Evidence(f'{metric("gpu_lost")}{{gpu="{index}"}}', 1), Evidence("uuid", gpu.uuid)],
            ctx.now,
            role="worker",
        )
        for index, gpu in _gpus(ctx).items()
        if gpu.lost
    ]


@rule(
    id="gpu_ecc_errors",
    category=Category.GPU_FAULT,
    severity=Severity.CRITICAL,
    summary="{subject} has uncorrectable ECC errors or pending row remaps",
    actions=(
        "Pending remaps take effect at the next GPU reset: drain the node and reset the GPU.",
        "A remap failure means the GPU needs replacement.",
    ),
    fleet=lambda s, t: (
        "("
        + s(metric("gpu_ecc_errors_total"), 'type="uncorrected",counter="volatile"')
        + " > 0) or on (namespace, pod, instance, gpu) (max without (kind) ("
        + s(metric("gpu_remapped_rows"), 'kind=~"pending|failure"')
        + ") > 0)"
    ),
    alert=Alert(
        "DynamoGPUEccErrors",
        "GPU {{ $labels.gpu }} of {{ $labels.namespace }}/{{ $labels.pod }} has uncorrectable ECC errors or pending row remaps",
    ),
)
def gpu_ecc_errors(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for index, gpu in _gpus(ctx).items():
        volatile = gpu.ecc.get("uncorrected_volatile", 0)
        pending, failure = gpu.remap_pending, gpu.remap_failure
        if volatile or pending or failure:
            hits.append(
                Hit(
                    f"gpu{index}",
                    {"volatile": volatile},
                    [
                        Evidence(
                            f'{metric("gpu_ecc_errors_total")}{{gpu="{index}",type="uncorrected",counter="volatile"}}',
                            volatile,
                        ),
                        Evidence(f'{metric("gpu_remapped_rows")}{{gpu="{index}",kind="pending"}}', pending),
                        Evidence(f'{metric("gpu_remapped_rows")}{{gpu="{index}",kind="failure"}}', failure),
                        Evidence("uuid", gpu.uuid),
                    ],
                    ctx.now,
                    role="worker",
                )
            )
    return hits


THROTTLE_REASONS = (
    "sw_power_cap",
    "hw_slowdown",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
)


@rule(
    id="gpu_throttling",
    category=Category.GPU_FAULT,
    severity=Severity.WARNING,
    summary="{subject} clocks are held down ({reasons}){while}",
    actions=(
        "Thermal: check the node's cooling and the GPU temperature against its slowdown threshold; power: check the power limit (`nvidia-smi -q -d POWER`).",
    ),
    fleet=lambda s, t: (
        "max without (reason) ("
        + s(metric("gpu_clock_event_reason"), 'reason=~"' + "|".join(THROTTLE_REASONS) + '"')
        + ") == 1"
    ),
)
def gpu_throttling(ctx: Context, t: Limits) -> list[Hit]:
    queued = (ctx.signals.queued or 0) > 0
    hits = []
    for index, gpu in _gpus(ctx).items():
        active = sorted(set(THROTTLE_REASONS) & set(gpu.clock_event_reasons))
        if not active:
            continue
        hits.append(
            Hit(
                f"gpu{index}",
                {"reasons": ", ".join(active), "while": " while requests queue" if queued else ""},
                [
                    *[
                        Evidence(f'{metric("gpu_clock_event_reason")}{{gpu="{index}",reason="{r}"}}', 1)
                        for r in active
                    ],
                    Evidence(
                        metric("gpu_temperature_celsius"),
                        gpu.temperature,
                        unit="celsius",
                        note=f"slowdown at {gpu.temperature_thresholds.get('slowdown')}",
                    ),
                    Evidence(
                        metric("gpu_power_watts"),
                        gpu.power_watts,
                        unit="watts",
                        note=f"limit {gpu.power_limit_watts}",
                    ),
                    Evidence(metric("dynamo_queued_requests"), ctx.signals.queued),
                ],
                ctx.now,
                role="worker",
            )
        )
    return hits


@rule(
    id="gpu_memory_near_full",
    category=Category.GPU_FAULT,
    severity=Severity.WARNING,
    summary="{subject} memory is {percent:.0f}% used",
    actions=(
        "Lower the engine's memory fraction or max batch size, or the KV cache size; out-of-memory in the engine kills requests.",
    ),
    thresholds=(Threshold("share", 0.97, "ratio", "GPU memory used as a share of total."),),
    fleet=lambda s, t: (
        s(metric("gpu_memory_bytes"), 'state="used"')
        + " / ignoring(state) "
        + s(metric("gpu_memory_bytes"), 'state="total"')
        + f" >= {t.share:g}"
    ),
)
def gpu_memory_near_full(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    for index, gpu in _gpus(ctx).items():
        used, total = gpu.memory_used, gpu.memory_total
        if used and total and used / total >= t.share:
            hits.append(
                Hit(
                    f"gpu{index}",
                    {"percent": used / total * 100},
                    [
                        Evidence(
                            f'{metric("gpu_memory_bytes")}{{gpu="{index}",state="used"}}', used, unit="bytes"
                        ),
                        Evidence(
                            f'{metric("gpu_memory_bytes")}{{gpu="{index}",state="total"}}',
                            total,
                            unit="bytes",
                        ),
                        Evidence("Dynamo processes on it", gpu.processes),
                    ],
                    ctx.now,
                    role="worker",
                )
            )
    return hits


# --- performance -----------------------------------------------------------------------------


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

    queued = s(metric("dynamo_queued_requests"))
    # The frontend's in-flight gauge counts the queued requests too.
    frontend_inflight = s(metric("dynamo_inflight_requests"), 'source="frontend"')
    frontend_running = f"({frontend_inflight} - ignoring(source) {queued})"
    standing = " or ".join(
        [
            held(queued, frontend_running, "ignoring(source) "),
            *(held(s(waiting), s(running)) for waiting, running, _ in QUEUE_SOURCES),
        ]
    )
    standing = f"({standing})"
    gpus = s(metric("gpu_utilization_ratio"), 'kind="gpu"')
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
            f'avg({metric("gpu_utilization_ratio")}{{kind="gpu"}})',
            None if utilization is None else round(utilization, 3),
            unit="ratio",
            note="no GPU visible to the sidecar" if utilization is None else "",
        ),
        Evidence(metric("dynamo_request_rate"), ctx.signals.request_rate, unit="requests/s"),
    ]


QUEUE_LEAD = (
    "{queued:.0f} requests queue at the {where}, at least {least:.0f} for {for} with {running:.0f} running"
)


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


LATENCY = metric("dynamo_latency_seconds")


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
        from agent.state import histogram_quantile

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
                        Evidence(metric("dynamo_request_rate"), ctx.signals.request_rate, unit="requests/s"),
                        Evidence(metric("dynamo_queued_requests"), ctx.signals.queued),
                    ],
                    _rise_times(_above(ctx.state, name, baseline, ctx.now - recent_window, ctx.now))[0]
                    or ctx.now,
                    role="frontend",
                )
            )
    return hits


def _count(buckets: list[tuple[float, float]]) -> float:
    return buckets[-1][1] if buckets else 0.0


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
        s(metric("slo_observed"))
        + " > ignoring(window) "
        + s(metric("slo_target"))
        + " > 0 and on (namespace, pod, objective) "
        + s(metric("slo_observations"))
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
                        f'{metric("slo_observed")}{{objective="{objective}"}}',
                        round(observation.value, 4),
                        unit=unit,
                        note=observation.text,
                    ),
                    Evidence(
                        f'{metric("slo_target")}{{objective="{objective}"}}', observation.target, unit=unit
                    ),
                    Evidence("observations in the window", observation.count),
                ],
                first or ctx.now,
                role="frontend",
                last_event=last,
            )
        )
    return hits


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
    id="rejections_rising",
    category=Category.PERFORMANCE_DEGRADATION,
    severity=Severity.WARNING,
    summary="Dynamo is rejecting {rate:.2f} requests/s: engine in-flight limit and queue are full",
    actions=("Scale out workers, or raise --dynamo-request-queue-limit if bursts are short.",),
    fleet=lambda s, t: s(metric("dynamo_rejection_rate")) + " > 0",
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
                Evidence(metric("dynamo_rejection_rate"), round(rate, 4), unit="requests/s"),
                Evidence(metric("dynamo_queued_requests"), ctx.signals.queued),
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
        from agent.state import counter_increase

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


# --- network --------------------------------------------------------------------------------


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
    fleet=lambda s, t: s(metric("probe_up")) + " == 0",
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
                f'{metric("probe_outcome")}{{target="{target}",outcome="{probe.outcome}"}}',
                1,
                timestamp=since,
            ),
            Evidence("error", probe.error),
            Evidence(
                f'{metric("probe_dns_seconds")}{{target="{target}"}}', probe.dns_seconds, unit="seconds"
            ),
        ]
        if probe.status:
            evidence.append(
                Evidence(f'{metric("probe_http_status_code")}{{target="{target}"}}', probe.status)
            )
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
        s(metric("probe_connect_seconds"))
        + f" >= {t.connect_seconds:g} or "
        + s(metric("probe_dns_seconds"))
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
                        Evidence(
                            f'{metric("probe_connect_seconds")}{{target="{target}"}}', connect, unit="seconds"
                        ),
                        Evidence(f'{metric("probe_dns_seconds")}{{target="{target}"}}', dns, unit="seconds"),
                    ],
                    ctx.now,
                )
            )
    return hits


@rule(
    id="port_not_listening",
    category=Category.STARTUP_FAILURE,
    severity=Severity.CRITICAL,
    summary="the {subject} port {port} is not listening in this pod",
    actions=(
        "The Dynamo process has not bound its port: check its logs for the bind error or a crash.",
        "Check the port settings (DYN_HTTP_PORT, DYN_SYSTEM_PORT; the system port must be below 32768 in Dynamo 1.6).",
    ),
    fleet=lambda s, t: s(metric("tcp_listening")) + " == 0",
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
                    [Evidence(f'{metric("tcp_listening")}{{port="{port}",role="{role}"}}', 0)],
                    ctx.now,
                    role="frontend" if role == "frontend" else "worker",
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
        s(metric("tcp_retransmit_ratio"))
        + f" >= {t.ratio:g} and on (namespace, pod, instance) increase("
        + s(metric("tcp_kernel_total"), 'counter="OutSegs"')
        + f"[5m]) >= {t.min_segments:g}"
    ),
)
def tcp_retransmits_high(ctx: Context, t: Limits) -> list[Hit]:
    ratio = ctx.signals.retransmit_ratio
    kernel = metric("tcp_kernel_total")
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
        for labels, ring in ctx.state.series_matching(metric("tcp_socket_retransmits"))
        if ring.last()
    }
    return [
        Hit(
            "pod",
            {"percent": ratio * 100},
            [
                Evidence(metric("tcp_retransmit_ratio"), round(ratio, 4), unit="ratio"),
                Evidence(f'increase({kernel}{{counter="OutSegs"}}[{ctx.signals.window:.0f}s])', sent),
                Evidence("retransmits by peer (tcp_info)", per_peer),
            ],
            began,
        )
    ]


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
        "sum without (direction) (" + s(metric("tcp_sockets"), 'state="close_wait"') + f") >= {t.sockets:g}"
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
                    Evidence(f'{metric("tcp_sockets")}{{state="close_wait",peer="{peer}"}}', count),
                    Evidence("CLOSE_WAIT sockets per Dynamo process (/proc/<pid>/fd)", owners or None),
                ],
                ctx.now,
            )
        )
    return hits
