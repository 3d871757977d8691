"""GPUs: XIDs, ECC and row remapping, thermals and clocks, NVML that stopped answering."""

from __future__ import annotations

from typing import Any

from agent.core import metrics as m
from agent.core.xid import xid_class
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
    _gpus,
)

RULES: list[Rule] = []
rule = registrar(RULES)


THROTTLE_REASONS = (
    "sw_power_cap",
    "hw_slowdown",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
)


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
    fleet=lambda s, t: "increase(" + s(m.GPU_XID_ERRORS_TOTAL.name) + "[15m]) > 0",
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
                        m.GPU_XID_ERRORS_TOTAL.selector(gpu=last["gpu"]),
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
    fleet=lambda s, t: s(m.GPU_LOST.name) + " == 1",
    alert=Alert(
        "DynamoGPULost", "GPU {{ $labels.gpu }} of {{ $labels.namespace }}/{{ $labels.pod }} is lost"
    ),
)
def gpu_lost(ctx: Context, t: Limits) -> list[Hit]:
    return [
        Hit(
            f"gpu{index}",
            {},
            [Evidence(m.GPU_LOST.selector(gpu=index), 1), Evidence("uuid", gpu.uuid)],
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
        + s(m.GPU_ECC_ERRORS_TOTAL.name, 'type="uncorrected",counter="volatile"')
        + " > 0) or on (namespace, pod, instance, gpu) (max without (kind) ("
        + s(m.GPU_REMAPPED_ROWS.name, 'kind=~"pending|failure"')
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
                            m.GPU_ECC_ERRORS_TOTAL.selector(
                                gpu=index, type="uncorrected", counter="volatile"
                            ),
                            volatile,
                        ),
                        Evidence(m.GPU_REMAPPED_ROWS.selector(gpu=index, kind="pending"), pending),
                        Evidence(m.GPU_REMAPPED_ROWS.selector(gpu=index, kind="failure"), failure),
                        Evidence("uuid", gpu.uuid),
                    ],
                    ctx.now,
                    role="worker",
                )
            )
    return hits


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
        + s(m.GPU_CLOCK_EVENT_REASON.name, 'reason=~"' + "|".join(THROTTLE_REASONS) + '"')
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
                    *[Evidence(m.GPU_CLOCK_EVENT_REASON.selector(gpu=index, reason=r), 1) for r in active],
                    Evidence(
                        m.GPU_TEMPERATURE_CELSIUS.name,
                        gpu.temperature,
                        unit="celsius",
                        note=f"slowdown at {gpu.temperature_thresholds.get('slowdown')}",
                    ),
                    Evidence(
                        m.GPU_POWER_WATTS.name,
                        gpu.power_watts,
                        unit="watts",
                        note=f"limit {gpu.power_limit_watts}",
                    ),
                    Evidence(m.DYNAMO_QUEUED_REQUESTS.name, ctx.signals.queued),
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
        s(m.GPU_MEMORY_BYTES.name, 'state="used"')
        + " / ignoring(state) "
        + s(m.GPU_MEMORY_BYTES.name, 'state="total"')
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
                        Evidence(m.GPU_MEMORY_BYTES.selector(gpu=index, state="used"), used, unit="bytes"),
                        Evidence(
                            m.GPU_MEMORY_BYTES.selector(gpu=index, state="total"),
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
