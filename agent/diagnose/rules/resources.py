"""Resources: CPU throttling, memory and OOM kills, file descriptors, pressure stall."""

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
from agent.diagnose.rules.common import (
    _first_step,
    _rise_times,
    _steps,
    _window,
)

RULES: list[Rule] = []
rule = registrar(RULES)


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
        + s(m.CGROUP_CPU_THROTTLED_PERIODS_TOTAL.name)
        + "[5m]) / increase("
        + s(m.CGROUP_CPU_PERIODS_TOTAL.name)
        + f"[5m]) > {t.ratio:g} and increase("
        + s(m.CGROUP_CPU_PERIODS_TOTAL.name)
        + f"[5m]) >= {t.min_periods:g}"
    ),
)
def cpu_throttled(ctx: Context, t: Limits) -> list[Hit]:
    window = _window(ctx)
    periods = ctx.state.increase(m.CGROUP_CPU_PERIODS_TOTAL.name, window, ctx.now)
    throttled = ctx.state.increase(m.CGROUP_CPU_THROTTLED_PERIODS_TOTAL.name, window, ctx.now)
    if not periods or throttled is None or periods < t.min_periods:
        return []
    ratio = throttled / periods
    if ratio <= t.ratio:
        return []
    since = ctx.now - window
    throttled_steps = _steps(ctx.state, m.CGROUP_CPU_THROTTLED_PERIODS_TOTAL.name, since, ctx.now)
    began = _first_step(
        ctx,
        _steps(ctx.state, m.CGROUP_CPU_PERIODS_TOTAL.name, since, ctx.now),
        lambda at, n, _: n > 0 and throttled_steps.get(at, 0.0) / n > t.ratio,
    )
    return [
        Hit(
            "cgroup",
            {"ratio": ratio * 100},
            [
                Evidence(
                    f"increase({m.CGROUP_CPU_THROTTLED_PERIODS_TOTAL.name}[{window:.0f}s]) / increase({m.CGROUP_CPU_PERIODS_TOTAL.name})",
                    round(ratio, 3),
                    unit="ratio",
                ),
                Evidence(
                    m.CGROUP_CPU_LIMIT_CORES.name,
                    ctx.state.value(m.CGROUP_CPU_LIMIT_CORES.name),
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
    limit = ctx.state.value(m.CGROUP_CPU_LIMIT_CORES.name)
    if not limit:
        return []  # no CPU limit: nothing to saturate against
    hits = []
    for process in ctx.processes.readable():
        rate = ctx.state.rate(m.PROCESS_CPU_SECONDS_TOTAL.name, window, ctx.now, pid=str(process.pid))
        if rate is None or rate < t.share * limit:
            continue
        steps = _steps(
            ctx.state, m.PROCESS_CPU_SECONDS_TOTAL.name, ctx.now - window, ctx.now, pid=str(process.pid)
        )
        began = _first_step(ctx, steps, lambda at, n, seconds: seconds > 0 and n / seconds >= t.share * limit)
        hits.append(
            Hit(
                process.name,
                {"cores": rate, "limit": limit},
                [
                    Evidence(
                        f"rate({m.PROCESS_CPU_SECONDS_TOTAL.selector(pid=process.pid)}[{window:.0f}s])",
                        round(rate, 3),
                        unit="cores",
                    ),
                    Evidence(m.CGROUP_CPU_LIMIT_CORES.name, limit, unit="cores"),
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
        s(m.CGROUP_MEMORY_USAGE_BYTES.name) + " / " + s(m.CGROUP_MEMORY_LIMIT_BYTES.name) + f" >= {t.share:g}"
    ),
)
def memory_near_limit(ctx: Context, t: Limits) -> list[Hit]:
    usage = ctx.state.value(m.CGROUP_MEMORY_USAGE_BYTES.name)
    limit = ctx.state.value(m.CGROUP_MEMORY_LIMIT_BYTES.name)
    if not usage or not limit or usage / limit < t.share:
        return []
    return [
        Hit(
            "cgroup",
            {"percent": usage / limit * 100},
            [
                Evidence(m.CGROUP_MEMORY_USAGE_BYTES.name, int(usage), unit="bytes"),
                Evidence(m.CGROUP_MEMORY_LIMIT_BYTES.name, int(limit), unit="bytes"),
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
    fleet=lambda s, t: "increase(" + s(m.CGROUP_MEMORY_EVENTS_TOTAL.name, 'event="oom_kill"') + "[15m]) > 0",
    alert=Alert(
        "DynamoOOMKilled", "The kernel OOM-killed a process in {{ $labels.namespace }}/{{ $labels.pod }}"
    ),
    events=True,
)
def oom_killed(ctx: Context, t: Limits) -> list[Hit]:
    series = m.CGROUP_MEMORY_EVENTS_TOTAL.name
    increase = ctx.state.increase(series, ctx.window, ctx.now, event="oom_kill")
    if not increase:
        return []
    first, last = _rise_times(_steps(ctx.state, series, ctx.now - ctx.window, ctx.now, event="oom_kill"))
    return [
        Hit(
            "cgroup",
            {"count": increase},
            [
                Evidence(
                    f"increase({m.CGROUP_MEMORY_EVENTS_TOTAL.selector(event='oom_kill')}[{ctx.window:.0f}s])",
                    increase,
                ),
                Evidence(
                    m.CGROUP_MEMORY_LIMIT_BYTES.name,
                    ctx.state.value(m.CGROUP_MEMORY_LIMIT_BYTES.name),
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
        s(m.PRESSURE_STALL_RATIO.name, 'resource="memory",kind="some",window="60s"') + f" >= {t.stall:g}"
    ),
)
def memory_pressure(ctx: Context, t: Limits) -> list[Hit]:
    hits = []
    series = m.PRESSURE_STALL_RATIO.name
    for scope in ("cgroup", "host"):
        stall = ctx.state.value(series, scope=scope, resource="memory", kind="some", window="60s")
        if stall is not None and stall >= t.stall:
            hits.append(
                Hit(
                    scope,
                    {"percent": stall * 100},
                    [
                        Evidence(
                            m.PRESSURE_STALL_RATIO.selector(
                                scope=scope, resource="memory", kind="some", window="60s"
                            ),
                            round(stall, 4),
                            unit="ratio",
                        ),
                        Evidence(
                            m.CGROUP_MEMORY_USAGE_BYTES.name,
                            ctx.state.value(m.CGROUP_MEMORY_USAGE_BYTES.name),
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
    fleet=lambda s, t: s(m.PROCESS_OPEN_FDS.name) + " / " + s(m.PROCESS_MAX_FDS.name) + f" >= {t.share:g}",
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
                        Evidence(m.PROCESS_OPEN_FDS.selector(pid=process.pid), fds),
                        Evidence(m.PROCESS_MAX_FDS.selector(pid=process.pid), limit),
                    ],
                    ctx.now,
                    role=process.role,
                )
            )
    return hits
