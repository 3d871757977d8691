"""Rules over resources, GPUs, the network and performance: where the bottleneck is (CPU,
memory, GPU, network) once the endpoints themselves answer."""

from __future__ import annotations

from typing import Any

from agent.diagnose.context import Context
from agent.diagnose.model import Evidence, Hit, Rule
from collectors.gpu import xid_class

P = "dynamo_sidecar_"


def _window(ctx: Context) -> float:
    """ "Now" for rules over rates: the signal window (default five minutes)."""
    return min(ctx.window, ctx.config.signal_window)


def _baseline(ctx: Context) -> float:
    """The pod's own baseline: the two windows before the recent one."""
    return 2 * ctx.config.signal_window


# --- resource pressure -------------------------------------------------------------------


def cpu_throttled(ctx: Context) -> list[Hit]:
    window = _window(ctx)
    periods = ctx.state.increase(P + "cgroup_cpu_periods_total", window, ctx.now)
    throttled = ctx.state.increase(P + "cgroup_cpu_throttled_periods_total", window, ctx.now)
    if not periods or throttled is None or periods < 10:
        return []
    ratio = throttled / periods
    if ratio < 0.25:
        return []
    limit = ctx.state.value(P + "cgroup_cpu_limit_cores")
    return [
        Hit(
            "cgroup",
            {"ratio": ratio * 100},
            [
                Evidence(
                    f"increase({P}cgroup_cpu_throttled_periods_total[{window:.0f}s]) / increase({P}cgroup_cpu_periods_total)",
                    round(ratio, 3),
                    unit="ratio",
                ),
                Evidence(f"{P}cgroup_cpu_limit_cores", limit, unit="cores"),
            ],
            ctx.now - window,
        )
    ]


def cpu_saturated(ctx: Context) -> list[Hit]:
    window = _window(ctx)
    limit = ctx.state.value(P + "cgroup_cpu_limit_cores")
    if not limit:
        return []  # no CPU limit: nothing to saturate against
    hits = []
    for process in ctx.state.facts("process").get("processes", []):
        if "pid" not in process:
            continue
        rate = ctx.state.rate(P + "process_cpu_seconds_total", window, ctx.now, pid=str(process["pid"]))
        if rate is None:
            continue
        if rate >= 0.9 * limit:
            hits.append(
                Hit(
                    f"{process['process']}/{process['pid']}",
                    {"cores": rate, "limit": limit},
                    [
                        Evidence(
                            f'rate({P}process_cpu_seconds_total{{pid="{process["pid"]}"}}[{window:.0f}s])',
                            round(rate, 3),
                            unit="cores",
                        ),
                        Evidence(f"{P}cgroup_cpu_limit_cores", limit, unit="cores"),
                    ],
                    ctx.now - window,
                )
            )
    return hits


def memory_near_limit(ctx: Context) -> list[Hit]:
    usage = ctx.state.value(P + "cgroup_memory_usage_bytes")
    limit = ctx.state.value(P + "cgroup_memory_limit_bytes")
    if not usage or not limit or usage / limit < 0.9:
        return []
    return [
        Hit(
            "cgroup",
            {"percent": usage / limit * 100},
            [
                Evidence(f"{P}cgroup_memory_usage_bytes", int(usage), unit="bytes"),
                Evidence(f"{P}cgroup_memory_limit_bytes", int(limit), unit="bytes"),
            ],
            ctx.now,
        )
    ]


def oom_killed(ctx: Context) -> list[Hit]:
    increase = ctx.state.increase(P + "cgroup_memory_events_total", ctx.window, ctx.now, event="oom_kill")
    if not increase:
        return []
    return [
        Hit(
            "cgroup",
            {"count": increase},
            [
                Evidence(
                    f'increase({P}cgroup_memory_events_total{{event="oom_kill"}}[{ctx.window:.0f}s])',
                    increase,
                ),
                Evidence(
                    f"{P}cgroup_memory_limit_bytes",
                    ctx.state.value(P + "cgroup_memory_limit_bytes"),
                    unit="bytes",
                ),
            ],
            ctx.now,
        )
    ]


def memory_pressure(ctx: Context) -> list[Hit]:
    hits = []
    for scope in ("cgroup", "host"):
        stall = ctx.state.value(
            P + "pressure_stall_ratio", scope=scope, resource="memory", kind="some", window="60s"
        )
        if stall is not None and stall >= 0.1:
            hits.append(
                Hit(
                    scope,
                    {"percent": stall * 100},
                    [
                        Evidence(
                            f'{P}pressure_stall_ratio{{scope="{scope}",resource="memory",kind="some",window="60s"}}',
                            round(stall, 4),
                            unit="ratio",
                        ),
                        Evidence(
                            f"{P}cgroup_memory_usage_bytes",
                            ctx.state.value(P + "cgroup_memory_usage_bytes"),
                            unit="bytes",
                        ),
                    ],
                    ctx.now,
                )
            )
    return hits


def fd_exhaustion(ctx: Context) -> list[Hit]:
    hits = []
    for process in ctx.state.facts("process").get("processes", []):
        fds, limit = process.get("open_fds"), process.get("max_fds")
        if fds and limit and fds / limit >= 0.9:
            hits.append(
                Hit(
                    f"{process['process']}/{process['pid']}",
                    {"fds": fds, "limit": limit},
                    [
                        Evidence(f'{P}process_open_fds{{pid="{process["pid"]}"}}', fds),
                        Evidence(f'{P}process_max_fds{{pid="{process["pid"]}"}}', limit),
                    ],
                    ctx.now,
                )
            )
    return hits


# --- GPU -----------------------------------------------------------------------------------


def _gpus(ctx: Context) -> dict[str, dict[str, Any]]:
    return ctx.state.facts("gpu").get("gpus", {})


def gpu_xid(ctx: Context) -> list[Hit]:
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
                        f'{P}gpu_xid_errors_total{{gpu="{last["gpu"]}"}}',
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
                events[0].timestamp,
            )
        )
    return hits


def gpu_lost(ctx: Context) -> list[Hit]:
    return [
        Hit(
            f"gpu{index}",
            {},
            [Evidence(f'{P}gpu_lost{{gpu="{index}"}}', 1), Evidence("uuid", gpu.get("uuid"))],
            ctx.now,
        )
        for index, gpu in _gpus(ctx).items()
        if gpu.get("lost")
    ]


def gpu_ecc(ctx: Context) -> list[Hit]:
    hits = []
    for index, gpu in _gpus(ctx).items():
        volatile = gpu.get("ecc_uncorrected_volatile") or 0
        pending, failure = gpu.get("remap_pending") or 0, gpu.get("remap_failure") or 0
        if volatile or pending or failure:
            hits.append(
                Hit(
                    f"gpu{index}",
                    {"volatile": volatile},
                    [
                        Evidence(
                            f'{P}gpu_ecc_errors_total{{gpu="{index}",type="uncorrected",counter="volatile"}}',
                            volatile,
                        ),
                        Evidence(f'{P}gpu_remapped_rows{{gpu="{index}",kind="pending"}}', pending),
                        Evidence(f'{P}gpu_remapped_rows{{gpu="{index}",kind="failure"}}', failure),
                        Evidence("uuid", gpu.get("uuid")),
                    ],
                    ctx.now,
                )
            )
    return hits


THROTTLE_REASONS = {
    "sw_power_cap",
    "hw_slowdown",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
}


def gpu_throttling(ctx: Context) -> list[Hit]:
    queued = (ctx.signals.queued or 0) > 0
    hits = []
    for index, gpu in _gpus(ctx).items():
        active = sorted(THROTTLE_REASONS & set(gpu.get("clock_event_reasons", [])))
        if not active:
            continue
        hits.append(
            Hit(
                f"gpu{index}",
                {"reasons": ", ".join(active), "while": " while requests queue" if queued else ""},
                [
                    *[
                        Evidence(f'{P}gpu_clock_event_reason{{gpu="{index}",reason="{r}"}}', 1)
                        for r in active
                    ],
                    Evidence(
                        f"{P}gpu_temperature_celsius",
                        gpu.get("temperature"),
                        unit="celsius",
                        note=f"slowdown at {gpu.get('temperature_slowdown')}",
                    ),
                    Evidence(
                        f"{P}gpu_power_watts",
                        gpu.get("power_watts"),
                        unit="watts",
                        note=f"limit {gpu.get('power_limit_watts')}",
                    ),
                    Evidence(f"{P}dynamo_queued_requests", ctx.signals.queued),
                ],
                ctx.now,
            )
        )
    return hits


def gpu_memory_near_full(ctx: Context) -> list[Hit]:
    hits = []
    for index, gpu in _gpus(ctx).items():
        used, total = gpu.get("memory_used"), gpu.get("memory_total")
        if used and total and used / total >= 0.97:
            hits.append(
                Hit(
                    f"gpu{index}",
                    {"percent": used / total * 100},
                    [
                        Evidence(f'{P}gpu_memory_bytes{{gpu="{index}",state="used"}}', used, unit="bytes"),
                        Evidence(f'{P}gpu_memory_bytes{{gpu="{index}",state="total"}}', total, unit="bytes"),
                        Evidence("Dynamo processes on it", gpu.get("processes")),
                    ],
                    ctx.now,
                )
            )
    return hits


# --- performance -----------------------------------------------------------------------------


def _queue_growing(ctx: Context) -> tuple[float, float] | None:
    """(now, at the window start) of the frontend queue when it grew and stands at 5 or more."""
    window = _window(ctx)
    best: tuple[float, float] | None = None
    for labels, _ in ctx.state.series_matching(ctx.names.queued):
        points = ctx.state.series_points(ctx.names.queued, labels, window, ctx.now)
        grew = len(points) >= 3 and points[-1][1] >= 5 and points[-1][1] > points[0][1]
        if grew and (best is None or points[-1][1] > best[0]):
            best = (points[-1][1], points[0][1])
    return best


def _mean_gpu_utilization(ctx: Context) -> float | None:
    values = [g["utilization"] for g in _gpus(ctx).values() if g.get("utilization") is not None]
    return sum(values) / len(values) if values else None


def queue_growing_gpu_idle(ctx: Context) -> list[Hit]:
    grown = _queue_growing(ctx)
    utilization = _mean_gpu_utilization(ctx)
    if not grown or utilization is None or utilization >= 0.3:
        return []
    return [
        Hit(
            "frontend",
            {"queued": grown[0], "utilization": utilization * 100},
            [
                Evidence(
                    f"{P}dynamo_queued_requests", grown[0], note=f"was {grown[1]:.0f} {_window(ctx):.0f}s ago"
                ),
                Evidence(f'avg({P}gpu_utilization_ratio{{kind="gpu"}})', round(utilization, 3), unit="ratio"),
            ],
            ctx.now - _window(ctx),
        )
    ]


def queue_growing_saturated(ctx: Context) -> list[Hit]:
    grown = _queue_growing(ctx)
    utilization = _mean_gpu_utilization(ctx)
    if not grown or (utilization is not None and utilization < 0.85):
        return []
    note = "no GPU visible to the sidecar" if utilization is None else ""
    return [
        Hit(
            "frontend",
            {"queued": grown[0]},
            [
                Evidence(
                    f"{P}dynamo_queued_requests", grown[0], note=f"was {grown[1]:.0f} {_window(ctx):.0f}s ago"
                ),
                Evidence(
                    f'avg({P}gpu_utilization_ratio{{kind="gpu"}})',
                    None if utilization is None else round(utilization, 3),
                    unit="ratio",
                    note=note,
                ),
                Evidence(f"{P}dynamo_request_rate", ctx.signals.request_rate, unit="requests/s"),
            ],
            ctx.now - _window(ctx),
        )
    ]


def latency_regression(ctx: Context) -> list[Hit]:
    hits = []
    histograms = ctx.names.latency_histograms()
    for signal in ("ttft", "queue", "itl"):
        name = histograms[signal]
        recent_window, baseline_window = _window(ctx), _baseline(ctx)
        recent = ctx.state.window_quantile(name, 0.99, recent_window, ctx.now)
        baseline = ctx.state.window_quantile(name, 0.99, baseline_window, ctx.now - recent_window)
        if recent is None or baseline is None or baseline <= 0:
            continue
        if recent >= 2 * baseline and recent - baseline >= 0.05:
            hits.append(
                Hit(
                    signal,
                    {"recent": recent * 1000, "baseline": baseline * 1000, "factor": recent / baseline},
                    [
                        Evidence(
                            f"histogram_quantile(0.99, {name}) over the last {recent_window:.0f}s",
                            round(recent, 4),
                            unit="seconds",
                        ),
                        Evidence(
                            f"the same over the {baseline_window:.0f}s before",
                            round(baseline, 4),
                            unit="seconds",
                        ),
                        Evidence(f"{P}dynamo_request_rate", ctx.signals.request_rate, unit="requests/s"),
                        Evidence(f"{P}dynamo_queued_requests", ctx.signals.queued),
                    ],
                    ctx.now - recent_window,
                )
            )
    return hits


def rejections_rising(ctx: Context) -> list[Hit]:
    rate = ctx.signals.rejection_rate
    if not rate:
        return []
    return [
        Hit(
            "dynamo",
            {"rate": rate},
            [
                Evidence(f"{P}dynamo_rejection_rate", round(rate, 4), unit="requests/s"),
                Evidence(f"{P}dynamo_queued_requests", ctx.signals.queued),
            ],
            ctx.now - ctx.signals.window,
        )
    ]


def migrations_rising(ctx: Context) -> list[Hit]:
    rate = ctx.signals.migration_rate
    if not rate:
        return []
    return [
        Hit(
            "dynamo",
            {"rate": rate},
            [Evidence(f"{P}dynamo_migration_rate", round(rate, 4), unit="requests/s")],
            ctx.now - ctx.signals.window,
        )
    ]


# --- network --------------------------------------------------------------------------------


def dependency_unreachable(ctx: Context) -> list[Hit]:
    hits = []
    for target, probe in ctx.state.facts("tcp").get("probes", {}).items():
        if probe.get("outcome") not in {None, "ok"}:
            hits.append(
                Hit(
                    probe.get("role", target),
                    {"target": target, "outcome": probe["outcome"]},
                    [
                        Evidence(f'{P}probe_outcome{{target="{target}",outcome="{probe["outcome"]}"}}', 1),
                        Evidence("error", probe.get("error")),
                        Evidence(
                            f'{P}probe_dns_seconds{{target="{target}"}}',
                            probe.get("dns_seconds"),
                            unit="seconds",
                        ),
                    ],
                    ctx.now,
                )
            )
    return hits


def dependency_slow(ctx: Context) -> list[Hit]:
    hits = []
    for target, probe in ctx.state.facts("tcp").get("probes", {}).items():
        connect, dns = probe.get("connect_seconds"), probe.get("dns_seconds")
        if probe.get("outcome") == "ok" and ((connect or 0) >= 0.1 or (dns or 0) >= 0.5):
            hits.append(
                Hit(
                    probe.get("role", target),
                    {"target": target, "connect": (connect or 0) * 1000, "dns": (dns or 0) * 1000},
                    [
                        Evidence(f'{P}probe_connect_seconds{{target="{target}"}}', connect, unit="seconds"),
                        Evidence(f'{P}probe_dns_seconds{{target="{target}"}}', dns, unit="seconds"),
                    ],
                    ctx.now,
                )
            )
    return hits


def port_not_listening(ctx: Context) -> list[Hit]:
    if ctx.in_startup_grace:
        return []
    facts = ctx.state.facts("tcp")
    hits = []
    for port, listening in facts.get("listening", {}).items():
        if listening is False:
            role = facts.get("service_ports", {}).get(port, "dynamo")
            hits.append(
                Hit(
                    role,
                    {"port": port},
                    [Evidence(f'{P}tcp_listening{{port="{port}",role="{role}"}}', 0)],
                    ctx.now,
                )
            )
    return hits


def retransmits_high(ctx: Context) -> list[Hit]:
    ratio = ctx.signals.retransmit_ratio
    sent = ctx.state.increase(P + "tcp_kernel_total", ctx.signals.window, ctx.now, counter="OutSegs") or 0
    if ratio is None or ratio < 0.02 or sent < 1000:
        return []
    per_peer = {
        dict(labels).get("peer"): ring.last()[1]
        for labels, ring in ctx.state.series_matching(P + "tcp_socket_retransmits")
        if ring.last()
    }
    return [
        Hit(
            "pod",
            {"percent": ratio * 100},
            [
                Evidence(f"{P}tcp_retransmit_ratio", round(ratio, 4), unit="ratio"),
                Evidence(
                    f'increase({P}tcp_kernel_total{{counter="OutSegs"}}[{ctx.signals.window:.0f}s])', sent
                ),
                Evidence("retransmits by peer (tcp_info)", per_peer),
            ],
            ctx.now - ctx.signals.window,
        )
    ]


def close_wait_leak(ctx: Context) -> list[Hit]:
    hits = []
    for peer, count in ctx.state.facts("tcp").get("close_wait", {}).items():
        if count >= 50:
            hits.append(
                Hit(
                    peer,
                    {"count": count},
                    [Evidence(f'{P}tcp_sockets{{state="close_wait",peer="{peer}"}}', count)],
                    ctx.now,
                )
            )
    return hits


SYSTEM_RULES: tuple[Rule, ...] = (
    Rule(
        "dependency_unreachable",
        "connection_anomaly",
        "critical",
        "{subject} ({target}) is unreachable from this pod: {outcome}",
        (
            "Check the dependency's pods and Service (`kubectl get pods,svc -n <ns>`); refused means nothing listens, timeout means a network policy or a dead node, dns_error means the name.",
            "Check NetworkPolicies between this namespace and the dependency's.",
            "Dynamo needs etcd for discovery and NATS for events: without them workers do not register.",
        ),
        dependency_unreachable,
        explains=(
            "frontend_no_instances:*",
            "dynamo_not_ready:*",
            "worker_registration_lost:*",
            "frontend_stale_instances:*",
        ),
    ),
    Rule(
        "dependency_slow",
        "connection_anomaly",
        "warning",
        "{subject} ({target}) answers slowly: connect {connect:.0f} ms, DNS {dns:.0f} ms",
        (
            "Check the dependency's load and the node's network; slow etcd makes registration and lease renewal flap.",
            "Slow DNS: check CoreDNS and ndots in the pod's resolv.conf.",
        ),
        dependency_slow,
    ),
    Rule(
        "port_not_listening",
        "startup_failure",
        "critical",
        "the {subject} port {port} is not listening in this pod",
        (
            "The Dynamo process has not bound its port: check its logs for the bind error or a crash.",
            "Check the port settings (DYN_HTTP_PORT, DYN_SYSTEM_PORT; the system port must be below 32768 in Dynamo 1.6).",
        ),
        port_not_listening,
    ),
    Rule(
        "tcp_retransmits_high",
        "connection_anomaly",
        "warning",
        "{percent:.1f}% of TCP segments are retransmitted: packet loss on the pod's network",
        (
            "Look at the per-peer retransmits in the evidence to find the path; check the node's NIC errors (`ethtool -S`) and the CNI.",
            "Cross-node KV transfer and request traffic suffer first: compare TTFT with the retransmit ratio.",
        ),
        retransmits_high,
    ),
    Rule(
        "close_wait_leak",
        "connection_anomaly",
        "warning",
        "{count} connections to {subject} stuck in CLOSE_WAIT: the peer closed, this pod never did (a socket leak)",
        (
            "The Dynamo process is not closing connections its peers closed; it will run out of descriptors. Restart it and report the leak.",
            "Compare with dynamo_sidecar_process_open_fds against its limit.",
        ),
        close_wait_leak,
    ),
    Rule(
        "cpu_throttled",
        "resource_pressure",
        "warning",
        "the container is CPU-throttled in {ratio:.0f}% of scheduling periods",
        (
            "Raise the container's CPU limit (or remove it and keep the request): throttling stalls the frontend's event loop and the tokenizer.",
            "Check dynamo_frontend_event_loop_stall_total and TTFT in the same window.",
        ),
        cpu_throttled,
    ),
    Rule(
        "cpu_saturated",
        "resource_pressure",
        "warning",
        "process {subject} uses {cores:.2f} cores of a {limit:.2f}-core limit",
        (
            "Raise the CPU limit, or add replicas: a saturated frontend queues requests before any GPU sees them.",
        ),
        cpu_saturated,
    ),
    Rule(
        "memory_near_limit",
        "resource_pressure",
        "warning",
        "the container uses {percent:.0f}% of its memory limit",
        (
            "Raise the memory limit before the kernel OOM-kills the process; check for growth in dynamo_sidecar_process_resident_memory_bytes.",
        ),
        memory_near_limit,
    ),
    Rule(
        "oom_killed",
        "resource_pressure",
        "critical",
        "the kernel OOM-killed {count:.0f} process(es) in the container",
        (
            "Raise the memory limit; `kubectl describe pod` shows OOMKilled as the last state.",
            "Large prompts and long contexts raise tokenizer and frontend memory: check input sequence lengths.",
        ),
        oom_killed,
    ),
    Rule(
        "memory_pressure",
        "resource_pressure",
        "warning",
        "tasks stalled on memory {percent:.0f}% of the last minute ({subject} PSI)",
        (
            "Memory is being reclaimed under pressure: raise the limit or move the pod; on host scope, the node is overcommitted.",
        ),
        memory_pressure,
    ),
    Rule(
        "fd_exhaustion",
        "resource_pressure",
        "critical",
        "process {subject} has {fds} of {limit} file descriptors open",
        ("Raise RLIMIT_NOFILE for the container, and look for a connection leak (close_wait_leak).",),
        fd_exhaustion,
    ),
    Rule(
        "gpu_xid",
        "gpu_fault",
        "critical",
        "{subject}: XID {xids} ({klass}): {description}",
        (
            "XID 79 (fallen off the bus), 48/95 (uncorrectable ECC), 119 (GSP timeout): cordon and drain the node (`kubectl cordon <node>`), then reset the GPU or reboot.",
            "XID 13/31/43 are usually the application: check the engine's logs around the timestamp.",
            "XID 94: a contained ECC error; only the affected process needs a restart.",
        ),
        gpu_xid,
    ),
    Rule(
        "gpu_lost",
        "gpu_fault",
        "critical",
        "{subject} is lost: NVML cannot reach it",
        (
            "Cordon the node and reset the GPU (`nvidia-smi -r`) or reboot; look for XID 79 in the kernel log (`dmesg`).",
        ),
        gpu_lost,
        explains=("gpu_xid:*",),
    ),
    Rule(
        "gpu_ecc_errors",
        "gpu_fault",
        "critical",
        "{subject} has uncorrectable ECC errors or pending row remaps",
        (
            "Pending remaps take effect at the next GPU reset: drain the node and reset the GPU.",
            "A remap failure means the GPU needs replacement.",
        ),
        gpu_ecc,
    ),
    Rule(
        "gpu_throttling",
        "gpu_fault",
        "warning",
        "{subject} clocks are held down ({reasons}){while}",
        (
            "Thermal: check the node's cooling and the GPU temperature against its slowdown threshold; power: check the power limit (`nvidia-smi -q -d POWER`).",
        ),
        gpu_throttling,
    ),
    Rule(
        "gpu_memory_near_full",
        "gpu_fault",
        "warning",
        "{subject} memory is {percent:.0f}% used",
        (
            "Lower the engine's memory fraction or max batch size, or the KV cache size; out-of-memory in the engine kills requests.",
        ),
        gpu_memory_near_full,
    ),
    Rule(
        "queue_growing_gpu_idle",
        "performance_degradation",
        "warning",
        "requests queue at the frontend ({queued:.0f}) while the GPUs are {utilization:.0f}% busy: a scheduling or routing problem, not capacity",
        (
            "Check the router: are requests going to a worker that does not serve (stale instance), or is one worker hot while others idle?",
            "Check worker health and canaries; compare per-worker in-flight (dynamo_component_inflight_requests).",
        ),
        queue_growing_gpu_idle,
    ),
    Rule(
        "queue_growing_saturated",
        "performance_degradation",
        "warning",
        "requests queue at the frontend ({queued:.0f}) with the GPUs saturated: out of capacity",
        (
            "Scale out workers (or the planner's limits); lower max_tokens or concurrency at the client side meanwhile.",
        ),
        queue_growing_saturated,
    ),
    Rule(
        "latency_regression",
        "performance_degradation",
        "warning",
        "{subject} p99 is {recent:.0f} ms, {factor:.1f}x this pod's own baseline of {baseline:.0f} ms",
        (
            "Look at what changed in the window: queue depth, GPU throttling, CPU throttling, retransmits (see the other findings).",
            "Compare with other pods: one pod is a node problem, all pods is load or a rollout.",
        ),
        latency_regression,
    ),
    Rule(
        "rejections_rising",
        "performance_degradation",
        "warning",
        "Dynamo is rejecting {rate:.2f} requests/s: engine in-flight limit and queue are full",
        ("Scale out workers, or raise --dynamo-request-queue-limit if bursts are short.",),
        rejections_rising,
    ),
    Rule(
        "migrations_rising",
        "performance_degradation",
        "info",
        "requests are being migrated between workers ({rate:.2f}/s)",
        ("Migrations follow worker failures: look for worker restarts and XIDs in the same window.",),
        migrations_rising,
    ),
)
