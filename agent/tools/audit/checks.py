"""Configuration checks over the pods a manifest describes, Dynamo-aware.

Each check is one record (id, severity, what it means, the exact change) next to the
predicate that finds it. Facts about Dynamo 1.6.1 behind them were measured on a real
frontend + mocker or read from the operator (docs/audit.md lists each with its source).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from agent.core import metrics as m
from agent.tools.audit.manifest import OPERATOR, PodUnit
from agent.tools.inject import COPIED_ENV

CONFIG = "configuration_risk"
CAPACITY = "capacity_risk"
# Dynamo's own shutdown budget (1.6.1 defaults): a worker waits 5 s after unregistering, then
# drains; the runtime forces exit after 30 s. The frontend drains for 5 s.
WORKER_DRAIN_DEFAULT = 5.0 + 30.0
FRONTEND_DRAIN_DEFAULT = 5.0
SIDECAR_MARGIN = 5.0  # the sidecar exits last: its flush and a margin after Dynamo's drain


@dataclass(frozen=True)
class Check:
    id: str
    category: str
    severity: str
    title: str  # what is wrong, in one line, for docs/audit.md
    predicate: Callable[
        [PodUnit, dict[str, Any]], Iterator[tuple[str, list[tuple[str, Any]], list[str], str]]
    ]
    # yields (summary, evidence [(path, value)], actions, severity override or "")


CHECKS: list[Check] = []


def check(id: str, severity: str, title: str, category: str = CONFIG) -> Callable[..., Any]:
    def wrap(predicate: Any) -> Any:
        CHECKS.append(Check(id, category, severity, title, predicate))
        return predicate

    return wrap


def _number(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _probe_path(probe: dict[str, Any]) -> str:
    http = probe.get("httpGet")
    if isinstance(http, dict):
        return str(http.get("path", "/"))
    command = " ".join(str(part) for part in ((probe.get("exec") or {}).get("command") or []))
    found = re.search(r"https?://[^/\s]+(/[\w/.-]*)", command)
    return found.group(1) if found else ""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _dynamo_drain(unit: PodUnit) -> float:
    if unit.role == "frontend":
        return _number(unit.env_value("DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS"), FRONTEND_DRAIN_DEFAULT)
    wait = _number(unit.env_value("DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS"), 5.0)
    return wait + _number(unit.env_value("DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT"), 30.0)


def _grace_fix(unit: PodUnit, seconds: int) -> str:
    path = (
        unit.grace.path
        if unit.grace.path not in (OPERATOR, "Kubernetes default")
        else f"{unit.spec_path}.terminationGracePeriodSeconds"
    )
    return f"set {path}: {seconds}"


# --- shutdown ------------------------------------------------------------------------------


@check(
    "grace_shorter_than_drain",
    "warning",
    "terminationGracePeriodSeconds shorter than the drain Dynamo and the sidecar need",
)
def _grace_vs_drain(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    grace = _number(unit.grace.value, 30)
    need = _dynamo_drain(unit) + SIDECAR_MARGIN
    if grace < need:
        yield (
            f"{unit.where}: the pod gets {grace:g}s to stop, the {unit.role}'s own drain takes up to "
            f"{_dynamo_drain(unit):g}s plus {SIDECAR_MARGIN:g}s for the sidecar to flush: the kubelet's SIGKILL can cut in-flight requests",
            [(unit.grace.path, grace)],
            [_grace_fix(unit, int(need + 5))],
            "",
        )
    observed = live.get("request_duration_max")
    if observed is not None and grace < observed + SIDECAR_MARGIN:
        yield (
            f"{unit.where}: the longest request the sidecar observed took {observed:.0f}s, the pod gets {grace:g}s to stop: "
            "a drain cannot wait for such a request",
            [
                (unit.grace.path, grace),
                (
                    "observed: dynamo_frontend_request_duration_seconds (max bucket reached)",
                    round(observed, 1),
                ),
            ],
            [_grace_fix(unit, int(observed + SIDECAR_MARGIN + 10))],
            "",
        )


def _frontend_drain_timeout(unit: PodUnit) -> tuple[float, str]:
    found = unit.env.get("DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS")
    if found is None or found.value is None:
        return FRONTEND_DRAIN_DEFAULT, "DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS (unset: 5 s)"
    return _number(found.value, FRONTEND_DRAIN_DEFAULT), found.path


@check(
    "no_prestop_drain",
    "warning",
    "frontend without a preStop drain: on SIGTERM Dynamo's own drain cuts streams after 5 s",
)
def _no_prestop(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    # Workers need no hook: on SIGTERM a worker unregisters from discovery at once, waits
    # DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS (5 s) for routers to notice, then finishes its
    # in-flight work; under the operator's Kubernetes discovery it already left routing when the
    # pod began terminating. A frontend closes its listener and drains for
    # DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS (5 s), then ends every stream still running
    # (lib/llm/src/http/service/service_v2.rs, ai-dynamo/dynamo 2a6da14c).
    if unit.role != "frontend" or (unit.main.get("lifecycle") or {}).get("preStop"):
        return
    grace = _number(unit.grace.value, 30)
    drain, drain_path = _frontend_drain_timeout(unit)
    if drain >= min(30.0, grace - 10):
        return
    fix = (
        "dynamo-sidecar inject -f <this file> --image <your image>: its preStop holds SIGTERM until the frontend's in-flight requests finish (up to the grace period less 5 s)"
        if unit.sidecar is None
        else f"add {unit.main_path}.lifecycle.preStop (exec: python3 -c POST http://127.0.0.1:9469/drain), as `dynamo-sidecar inject` writes it"
    )
    yield (
        f"{unit.where}: main has no preStop hook and the frontend drains for {drain:g}s after SIGTERM: a stream longer than that is cut "
        f"when the pod stops (rolling update, scale-in), although the pod has {grace:g}s",
        [(f"{unit.main_path}.lifecycle.preStop", None), (drain_path, drain)],
        [
            fix,
            f"or set DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS in {unit.env_path} to your longest stream (at most {max(1, grace - 10):g}s with this grace period)",
        ],
        "",
    )


def _pre_stop_hold(pre_stop: dict[str, Any]) -> float | None:
    """Seconds a worker's preStop can hold SIGTERM back: a `sleep` action or command, or
    the sidecar's blocking /drain (up to its timeout); None when it returns at once."""
    sleep = pre_stop.get("sleep")
    if isinstance(sleep, dict):
        return _number(sleep.get("seconds"), 0)
    command = " ".join(str(part) for part in ((pre_stop.get("exec") or {}).get("command") or []))
    if "/drain" in command and "wait=false" not in command:
        found = re.search(r"timeout=(\d+(?:\.\d+)?)", command)
        return _number(found.group(1), 0) if found else None
    found = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", command)
    return _number(found.group(1), 0) if found else None


@check(
    "worker_prestop_holds_sigterm",
    "warning",
    "a worker preStop holds SIGTERM back: Dynamo's own shutdown is left too little of the grace period",
)
def _worker_hold(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    pre_stop = (unit.main.get("lifecycle") or {}).get("preStop")
    if unit.role != "worker" or not isinstance(pre_stop, dict):
        return
    hold = _pre_stop_hold(pre_stop)
    if hold is None:
        return
    grace = _number(unit.grace.value, 30)
    need = _dynamo_drain(unit)
    if grace - hold >= need:
        return
    yield (
        f"{unit.where}: main's preStop can hold SIGTERM for {hold:g}s of the pod's {grace:g}s: Dynamo's worker shutdown "
        f"(unregister, {_number(unit.env_value('DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS'), 5.0):g}s for routers to notice, then its in-flight work, up to {need:g}s) "
        f"gets {max(0.0, grace - hold):g}s before the kubelet's SIGKILL",
        [(f"{unit.main_path}.lifecycle.preStop", hold), (unit.grace.path, grace)],
        [
            "re-run `dynamo-sidecar inject`: a worker's hook now only marks the drain's start (POST /drain?wait=false) and Dynamo drains itself",
            f"or shorten the hook to at most {max(0.0, grace - need):g}s, or raise the grace period",
        ],
        "",
    )


@check(
    "sidecar_drain_exceeds_grace",
    "critical",
    "the sidecar's drain_timeout does not fit the pod's grace period",
)
def _sidecar_drain(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    env = unit.sidecar_env()
    if unit.sidecar is None or not env.get("DYN_SIDECAR_DRAIN_TIMEOUT"):
        return
    drain = _number(env["DYN_SIDECAR_DRAIN_TIMEOUT"], 0)
    flush = _number(env.get("DYN_SIDECAR_FLUSH_TIMEOUT"), 5.0)
    grace = _number(unit.grace.value, 30)
    if drain + flush > grace:
        yield (
            f"{unit.where}: the sidecar may drain for {drain:g}s and flush for {flush:g}s, the pod gets {grace:g}s: "
            "the sidecar refuses to start with this (config error, exit 64)",
            [(f"{unit.sidecar_path}.env[DYN_SIDECAR_DRAIN_TIMEOUT]", drain), (unit.grace.path, grace)],
            [
                f"set DYN_SIDECAR_DRAIN_TIMEOUT to at most {max(1, grace - flush - 1):g} or unset it (it then follows the grace period)"
            ],
            "",
        )


# --- probes --------------------------------------------------------------------------------


@check(
    "worker_liveness_single_failure",
    "info",
    "worker liveness restarts the container after one failed probe (critical with Dynamo's canary on)",
)
def _liveness_one(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    probe = unit.probes.get("livenessProbe")
    if unit.role != "worker" or probe is None:
        return
    threshold = _number(probe.value.get("failureThreshold"), 3)
    if threshold > 1:
        return
    canary = _truthy(unit.env_value("DYN_HEALTH_CHECK_ENABLED"))
    path = _probe_path(probe.value)
    yield (
        f"{unit.where}: liveness on {path or 'the worker'} with failureThreshold {threshold:g}: one slow or failed probe restarts "
        "the worker (in 1.6.1 /live answers as /health does)"
        + ("; with Dynamo's canary on, a busy worker whose canary times out is restarted" if canary else ""),
        [
            (
                f"{probe.path}.failureThreshold"
                if probe.path != OPERATOR
                else "livenessProbe (operator default)",
                threshold,
            )
        ],
        [
            f"set {unit.main_path}.livenessProbe with failureThreshold: 3 (and timeoutSeconds >= 10), keeping path /live on port system"
        ],
        # With Dynamo's canary off (the operator's default) /live only reports the system
        # server itself, which does no I/O: one missed probe is a stuck process, and a quick
        # restart is what NVIDIA chose. With the canary on, one slow canary restarts the worker.
        "critical" if canary else "",
    )


@check(
    "frontend_readiness_on_health",
    "info",
    "frontend readiness on /health, which is healthy with zero workers (the operator's default: a trade-off)",
)
def _frontend_readiness(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    probe = unit.probes.get("readinessProbe")
    if unit.role != "frontend" or probe is None or _probe_path(probe.value) != "/health":
        return
    # A trade-off, not a fault: the operator's own default, documented upstream ("an empty
    # endpoints or instances array ... does not change the frontend response status"). A
    # readiness on /v1/models would instead take every frontend out of the Service while the
    # workers restart, turning 503s into refused connections.
    yield (
        f'{unit.where}: readiness checks /health, which answers 200 "healthy" with no worker registered: '
        "the pod stays in the Service while requests fail with 503 until a worker registers",
        [(probe.path, _probe_path(probe.value))],
        [
            "alert on zero workers instead: the sidecar's frontend_no_instances finding (alert DynamoFrontendNoWorkers)",
            f"or, to take a frontend without workers out of the Service, set {unit.main_path}.readinessProbe to an exec that requires a model: "
            "curl -sf http://localhost:8000/v1/models | grep -q '\"id\"'",
        ],
        "",
    )


# --- Dynamo environment ------------------------------------------------------------------------


@check(
    "worker_health_check_disabled",
    "info",
    "DYN_HEALTH_CHECK_ENABLED off on a worker: a trade-off (critical when readiness on /health then never passes)",
)
def _health_check(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    if unit.role != "worker" or _truthy(unit.env_value("DYN_HEALTH_CHECK_ENABLED")):
        return
    found = unit.env.get("DYN_HEALTH_CHECK_ENABLED")
    legacy = (
        unit.env_value("DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS")
        or unit.env_value("DYN_SYSTEM_STARTING_HEALTH_STATUS") == "ready"
    )
    readiness = unit.probes.get("readinessProbe")
    on_health = readiness is not None and _probe_path(readiness.value) == "/health"
    where = (
        found.path
        if found is not None and found.path != OPERATOR
        else f"{unit.env_path}[name=DYN_HEALTH_CHECK_ENABLED]"
    )
    shown = (
        None if found is None else (f"{found.value} ({OPERATOR})" if found.path == OPERATOR else found.value)
    )
    if legacy or (found is not None and found.path == OPERATOR):
        # NVIDIA's operator sets it false on purpose (ai-dynamo/dynamo#5038, Dec 2025, a week after
        # turning it on): with its liveness on /live at failureThreshold 1, a canary that times
        # out on a busy worker (3 s, every 10 s idle) marks the endpoint notready and the kubelet
        # restarts a serving worker. The price: a hung engine keeps /health at 200.
        watched = unit.sidecar is not None or live.get("in_pod")
        yield (
            f"{unit.where}: Dynamo's canary is off (DYN_HEALTH_CHECK_ENABLED not true), as NVIDIA's operator sets it on purpose: "
            "a hung engine keeps /health 200 and nothing in Kubernetes restarts it"
            + ("; the sidecar's canary and engine_hung finding watch for it" if watched else ""),
            [(where, shown)],
            [
                "keep it off, and let the sidecar's canary and engine_hung finding catch a hung engine"
                + ("" if watched else ": dynamo-sidecar inject -f <this file>"),
                f"to turn Dynamo's canary on, set DYN_HEALTH_CHECK_ENABLED=true in {unit.env_path} and the liveness failureThreshold to 3 "
                "with timeoutSeconds >= 10 together (see worker_liveness_single_failure)",
            ],
            "",
        )
        return
    yield (
        f"{unit.where}: DYN_HEALTH_CHECK_ENABLED is not true and nothing else marks endpoints ready: the worker's /health "
        "stays 503 notready although it serves (measured on 1.6.1)"
        + ("; its readiness probe on /health keeps it out of service" if on_health else ""),
        [(where, shown)],
        [f"set DYN_HEALTH_CHECK_ENABLED=true in {unit.env_path}, or DYN_SYSTEM_STARTING_HEALTH_STATUS=ready"],
        "critical" if on_health else "warning",
    )


@check(
    "deprecated_endpoint_health_status",
    "info",
    "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS set by hand (deprecated in 1.6.1)",
)
def _deprecated(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    found = unit.env.get("DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS")
    if found is None or found.path == OPERATOR:
        return
    yield (
        f'{unit.where}: DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS is deprecated (1.6.1 logs "deprecated and no longer used")',
        [(found.path, found.value)],
        ["remove it and set DYN_HEALTH_CHECK_ENABLED=true"],
        "",
    )


@check("system_port_out_of_range", "critical", "DYN_SYSTEM_PORT above 32767, which 1.6.1 rejects")
def _system_port(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    found = unit.env.get("DYN_SYSTEM_PORT")
    if found is None or found.value is None:
        return
    port = _number(found.value, -1)
    if port > 32767:
        yield (
            f"{unit.where}: DYN_SYSTEM_PORT={found.value}: Dynamo 1.6.1 parses it as a 16-bit signed integer and the worker does not start",
            [(found.path, found.value)],
            [f"set DYN_SYSTEM_PORT to a port from 1024 to 32767 (the operator uses 9090) at {found.path}"],
            "",
        )


@check("migration_off", "warning", "request migration off: a worker loss fails every in-flight stream")
def _migration(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    if unit.role != "frontend":
        return
    limit = unit.env_value("DYN_MIGRATION_LIMIT")
    flag = next((a for a in unit.args if a.startswith("--migration-limit")), None)
    value = None
    if flag is not None:
        value = flag.partition("=")[2] or (
            unit.args[unit.args.index(flag) + 1] if unit.args.index(flag) + 1 < len(unit.args) else ""
        )
    elif limit is not None:
        value = limit
    if value is not None and _number(value, 0) > 0:
        return
    # Migration moves a stream to another worker: in a graph of one worker pod there is none,
    # and the advice is for when it scales out.
    single = unit.graph_workers is not None and unit.graph_workers < 2
    yield (
        f"{unit.where}: request migration is off (no --migration-limit, DYN_MIGRATION_LIMIT unset or 0): when a worker dies, "
        "every stream it serves ends with an in-band error after HTTP 200",
        [(f"{unit.main_path}.args --migration-limit / env DYN_MIGRATION_LIMIT", value)]
        + (
            [("worker pods in the graph (worker/decode replicas)", unit.graph_workers)]
            if unit.graph_workers is not None
            else []
        ),
        [
            f"set DYN_MIGRATION_LIMIT=3 in {unit.env_path} (or --migration-limit 3) when clients stream"
            + (" and the graph runs more than one worker pod" if single else "")
        ],
        "info" if single else "",
    )


# --- resources and the sidecar -----------------------------------------------------------------


@check("main_without_resources", "warning", "no CPU or memory request/limit on main")
def _resources(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    resources = unit.resources.value if isinstance(unit.resources.value, dict) else {}
    missing = []
    for part in ("requests", "limits"):
        section = resources.get(part) or {}
        for kind in ("cpu", "memory"):
            if kind not in section:
                missing.append(f"{part}.{kind}")
    if unit.dgd:
        # The operator's service `resources` block uses requests/limits too; a flat one means both.
        flat = {k for k in resources if k in {"cpu", "memory"}}
        missing = [m for m in missing if m.split(".")[1] not in flat]
    if not missing:
        return
    severity = "warning" if any(m.endswith("memory") for m in missing) else "info"
    yield (
        f"{unit.where}: main has no {', '.join(missing)}: the scheduler cannot place it by its needs, and without a memory limit "
        "a leak takes the node's memory before the pod is killed",
        [(unit.resources.path or f"{unit.main_path}.resources", resources or None)],
        [
            f"set {unit.resources.path or unit.main_path + '.resources'} requests and limits for cpu and memory (the sidecar's observed peak: `dynamo-sidecar audit --live`)"
        ],
        "" if severity == "warning" else "info",
    )


@check("memory_limit_below_peak", "critical", "main's memory limit below the observed peak plus a margin")
def _memory_peak(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    peak = live.get("memory_peak_bytes")
    resources = unit.resources.value if isinstance(unit.resources.value, dict) else {}
    limit = _quantity(
        (resources.get("limits") or {}).get("memory") or (resources.get("memory") if unit.dgd else None)
    )
    if peak is None or limit is None or limit >= peak * 1.2:
        return
    yield (
        f"{unit.where}: the Dynamo processes peaked at {peak / 2**20:.0f} MiB, the memory limit is {limit / 2**20:.0f} MiB: "
        "less than 20% headroom, the next peak can be an OOM kill",
        [
            (f"{unit.resources.path}.limits.memory", limit),
            (f"observed: {m.PROCESS_RESIDENT_MEMORY_BYTES.name} (max)", peak),
        ],
        [f"raise {unit.resources.path}.limits.memory to at least {int(peak * 1.3 / 2**20)}Mi"],
        "",
    )


@check("cpu_limit_throttled", "warning", "a CPU limit on main with throttling observed")
def _cpu_throttled(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    throttled = live.get("cpu_throttled")
    resources = unit.resources.value if isinstance(unit.resources.value, dict) else {}
    limit = (resources.get("limits") or {}).get("cpu")
    if not throttled or limit is None:
        return
    yield (
        f"{unit.where}: main has a CPU limit of {limit} and the sidecar saw it throttled ({throttled})",
        [(f"{unit.resources.path}.limits.cpu", limit), ("observed: /diagnose cpu_throttled", throttled)],
        [f"raise or remove {unit.resources.path}.limits.cpu (keep the request)"],
        "",
    )


@check("no_sidecar", "info", "not watched by dynamo-sidecar")
def _no_sidecar(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    if unit.sidecar is not None or live.get("in_pod"):
        return
    yield (
        f"{unit.where}: no dynamo-sidecar: nothing in the pod diagnoses it, drains it or sends canaries",
        [(f"{unit.spec_path}.initContainers[name=dynamo-sidecar]", None)],
        [
            "dynamo-sidecar inject -f <this file> --image <your image> | kubectl apply -f -, or label the namespace for the webhook"
        ],
        "",
    )


@check("sidecar_without_process_namespace", "warning", "sidecar injected without shareProcessNamespace")
def _process_namespace(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    if unit.sidecar is None or unit.spec.get("shareProcessNamespace") is True:
        return
    yield (
        f"{unit.where}: the sidecar cannot see the Dynamo processes (no shareProcessNamespace): no CPU, memory, fd or stall data, "
        "and the process rules stay silent",
        [(f"{unit.spec_path}.shareProcessNamespace", unit.spec.get("shareProcessNamespace"))],
        [f"set {unit.spec_path}.shareProcessNamespace: true"],
        "",
    )


@check("sidecar_missing_dynamo_env", "warning", "sidecar injected without main's DYN_* settings")
def _sidecar_env(unit: PodUnit, live: dict[str, Any]) -> Iterator[Any]:
    if unit.sidecar is None:
        return
    have = unit.sidecar_env()
    missing = sorted(
        name
        for name, located in unit.env.items()
        if COPIED_ENV.search(name) and located.path != OPERATOR and name not in have
    )
    # The operator's own defaults (DYN_SYSTEM_PORT 9090, ...) are the sidecar's defaults too.
    if not missing:
        return
    yield (
        f"{unit.where}: the sidecar lacks main's {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}: environment is per "
        "container, so it watches the default ports and paths, not the ones Dynamo uses",
        [(f"{unit.sidecar_path}.env", sorted(have)[:20])],
        [
            "re-run `dynamo-sidecar inject` (it copies main's DYN_*, ETCD_ENDPOINTS, NATS_SERVER and OTEL_* env), or add them by hand"
        ],
        "",
    )


def _quantity(raw: Any) -> float | None:
    if raw is None:
        return None
    text = str(raw).strip()
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * factor
            except ValueError:
                return None
    try:
        return float(text)
    except ValueError:
        return None


def run_checks(units: list[PodUnit], live: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    live = live or {}
    findings = []
    for unit in units:
        for record in CHECKS:
            for summary, evidence, actions, severity in record.predicate(unit, live):
                findings.append(
                    {
                        "id": f"{record.id}:{unit.where}",
                        "rule": record.id,
                        "category": record.category,
                        "severity": severity or record.severity,
                        "summary": summary,
                        "subject": unit.where,
                        "since": 0,
                        "evidence": [{"signal": path, "value": value} for path, value in evidence],
                        "actions": actions,
                        "explained_by": [],
                        "explains": [],
                    }
                )
    return findings
