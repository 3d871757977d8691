"""Alerts and fleet queries take a deployment's threshold overrides as the pod view does.

For every threshold a fleet query applies, the threshold is overridden to a value away from
its default, and series just short of, at and past the overridden value are fed to the
generated alert rules (`alerts_yaml(overrides)`, the file `dynamo-sidecar alerts --config`
prints) in one `promtool test rules` run. A rule whose alert ignored the override fails at
the "short" case, where the default would fire (or at "at"/"past", where it would not). A
test fails when a threshold has no case here. Where the pod view reads the same series
(sample-based rules), it is evaluated on them too, with the same overrides.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.core import metrics as m
from agent.diagnose.alerts import alert_rules, alerts_yaml
from agent.diagnose.engine import RULES
from agent.diagnose.fleet import fleet_queries

STEP = 15  # seconds between samples
STEPS = 61  # 0 .. 15 min
END = (STEPS - 1) * STEP  # the evaluation time, in seconds from the series' start

Series = dict[str, list[float]]


def const(value: float) -> list[float]:
    return [value] * STEPS


def became(before: float, after: float, seconds_ago: float) -> list[float]:
    """`after` at every sample at or after END - seconds_ago, `before` earlier."""
    return [after if i * STEP >= END - seconds_ago else before for i in range(STEPS)]


def jump(total: float, seconds_ago: float) -> list[float]:
    """A counter that rose by `total` at one sample, `seconds_ago` before the end."""
    return became(0.0, total, seconds_ago)


def counter(per_step: float) -> list[float]:
    return [i * per_step for i in range(STEPS)]


P = "dynamo_sidecar_"
REQUESTS = 'dynamo_frontend_requests_total{model="m",endpoint="completions",request_type="unary",status="error",error_type="unavailable"}'
QUEUE = m.DYNAMO_QUEUED_REQUESTS.name
INFLIGHT = m.DYNAMO_INFLIGHT_REQUESTS.selector(source="frontend")
GPU = P + 'gpu_utilization_ratio{gpu="0",uuid="G",kind="gpu"}'
LATENCY = P + 'dynamo_latency_seconds{signal="ttft",percentile="p99",window="300s"}'


def throttle(ratio: float, per_step: float = 100) -> Series:
    return {
        P + "cgroup_cpu_periods_total": counter(per_step),
        P + "cgroup_cpu_throttled_periods_total": counter(per_step * ratio),
    }


def queue(level: float, utilization: float | None, running: float = 1.0, held: float = 300) -> Series:
    """A queue standing at `level` for the last `held` seconds with `running` requests served
    beside it (the frontend's in-flight gauge counts both)."""
    out = {QUEUE: became(0, level, held), INFLIGHT: became(0, level + running, held)}
    if utilization is not None:
        out[GPU] = const(utilization)
    return out


def queue_cases() -> dict[tuple[str, str], tuple[float, list[tuple[str, Series, bool]]]]:
    """The standing-queue thresholds every queue rule shares, each for the GPU band it takes."""
    out: dict[tuple[str, str], tuple[float, list[tuple[str, Series, bool]]]] = {}
    for rule, utilization in (
        ("queue_growing_gpu_idle", 0.1),
        ("queue_growing_saturated", 0.95),
        ("queue_growing", None),
    ):
        out[(rule, "queued")] = (
            10,
            [
                (c, queue(q, utilization), f)
                for c, q, f in (("short", 9, False), ("at", 10, True), ("past", 11, True))
            ],
        )
        out[(rule, "ratio")] = (
            2,
            [
                (c, queue(10, utilization, running=r), f)
                for c, r, f in (("short", 5.5, False), ("at", 5, True), ("past", 4.5, True))
            ],
        )
        out[(rule, "for_seconds")] = (
            60,
            [
                (c, queue(10, utilization, held=h), f)
                for c, h, f in (("short", 45, False), ("at", 60, True), ("past", 90, True))
            ],
        )
    return out


def share(used: str, total: str, value: float) -> Series:
    return {used: const(value), total: const(100)}


def retransmits(ratio: float, segments: float) -> Series:
    return {
        P + 'tcp_retransmit_ratio{window="300s"}': const(ratio),
        P + 'tcp_kernel_total{counter="OutSegs"}': counter(segments / 20),
    }


def slo(observations: float) -> Series:
    return {
        P + 'slo_observed{objective="ttft_p99"}': const(0.9),
        P + 'slo_target{objective="ttft_p99"}': const(0.5),
        P + 'slo_observations{objective="ttft_p99"}': const(observations),
    }


# (rule, threshold) -> (overridden value, [(case, series, the alert fires)]). "short" is just
# before the overridden threshold, "at" on it, "past" beyond it.
CASES: dict[tuple[str, str], tuple[float, list[tuple[str, Series, bool]]]] = {
    ("process_stalled", "stopped_seconds"): (
        60,
        [
            (c, {P + 'process_state{process="m",pid="1",state="T"}': became(0, 1, s)}, f)
            for c, s, f in (("short", 45, False), ("at", 60, True), ("past", 90, True))
        ],
    ),
    ("process_stalled", "uninterruptible_seconds"): (
        60,
        [
            (c, {P + 'process_state{process="m",pid="1",state="D"}': became(0, 1, s)}, f)
            for c, s, f in (("short", 45, False), ("at", 60, True), ("past", 90, True))
        ],
    ),
    ("frontend_no_instances", "for_seconds"): (
        60,
        [
            (c, {P + 'frontend_instances{endpoint="frontend"}': became(2, 0, s)}, f)
            for c, s, f in (("short", 45, False), ("at", 60, True), ("past", 90, True))
        ],
    ),
    ("request_failures", "failures"): (
        5,
        [
            (c, {REQUESTS: jump(n, 30)}, f)
            for c, n, f in (("short", 4, False), ("at", 5, True), ("past", 6, True))
        ],
    ),
    ("request_failures", "window_seconds"): (
        60,
        [
            (c, {REQUESTS: jump(1, s)}, f)
            for c, s, f in (("outside", 90, False), ("inside", 45, True), ("latest", 15, True))
        ],
    ),
    ("worker_restarted", "restarts"): (
        3,
        [
            (c, {P + 'worker_restarts_total{endpoint="worker"}': jump(n, 300)}, f)
            for c, n, f in (("short", 2, False), ("at", 3, True), ("past", 4, True))
        ],
    ),
    ("engine_hung", "stalled_seconds"): (
        30,
        [
            (c, {P + "dynamo_stalled_seconds": const(v)}, f)
            for c, v, f in (("short", 29, False), ("at", 30, True), ("past", 31, True))
        ],
    ),
    ("cpu_throttled", "ratio"): (
        0.5,
        [
            (c, throttle(r), f)
            for c, r, f in (("short", 0.49, False), ("at", 0.5, False), ("past", 0.51, True))
        ],
    ),
    ("cpu_throttled", "min_periods"): (
        1000,
        [
            (c, throttle(0.9, n / 20), f)
            for c, n, f in (("short", 980, False), ("at", 1000, True), ("past", 1020, True))
        ],
    ),
    ("memory_near_limit", "share"): (
        0.5,
        [
            (c, share(P + "cgroup_memory_usage_bytes", P + "cgroup_memory_limit_bytes", v), f)
            for c, v, f in (("short", 49, False), ("at", 50, True), ("past", 51, True))
        ],
    ),
    ("memory_pressure", "stall"): (
        0.5,
        [
            (
                c,
                {
                    P
                    + 'pressure_stall_ratio{scope="cgroup",resource="memory",kind="some",window="60s"}': const(
                        v
                    )
                },
                f,
            )
            for c, v, f in (("short", 0.49, False), ("at", 0.5, True), ("past", 0.51, True))
        ],
    ),
    ("fd_exhaustion", "share"): (
        0.5,
        [
            (
                c,
                share(
                    P + 'process_open_fds{process="m",pid="1"}', P + 'process_max_fds{process="m",pid="1"}', v
                ),
                f,
            )
            for c, v, f in (("short", 49, False), ("at", 50, True), ("past", 51, True))
        ],
    ),
    ("gpu_memory_near_full", "share"): (
        0.5,
        [
            (
                c,
                share(
                    P + 'gpu_memory_bytes{gpu="0",uuid="G",state="used"}',
                    P + 'gpu_memory_bytes{gpu="0",uuid="G",state="total"}',
                    v,
                ),
                f,
            )
            for c, v, f in (("short", 49, False), ("at", 50, True), ("past", 51, True))
        ],
    ),
    ("queue_growing_gpu_idle", "idle"): (
        0.5,
        [
            (c, queue(20, u), f)
            for c, u, f in (("short", 0.51, False), ("at", 0.5, False), ("past", 0.49, True))
        ],
    ),
    ("queue_growing_saturated", "busy"): (
        0.6,
        [
            (c, queue(20, u), f)
            for c, u, f in (("short", 0.59, False), ("at", 0.6, True), ("past", 0.61, True))
        ],
    ),
    ("latency_regression", "factor"): (
        3,
        [
            (c, {LATENCY: became(1, x, 285)}, f)
            for c, x, f in (("short", 2.9, False), ("at", 3.0, True), ("past", 3.1, True))
        ],
    ),
    ("latency_regression", "min_delta"): (
        1.5,
        [
            (c, {LATENCY: became(1, x, 285)}, f)
            for c, x, f in (("short", 2.4, False), ("at", 2.5, True), ("past", 2.6, True))
        ],
    ),
    ("slo_breach", "min_observations"): (
        50,
        [(c, slo(n), f) for c, n, f in (("short", 49, False), ("at", 50, True), ("past", 51, True))],
    ),
    ("dependency_slow", "connect_seconds"): (
        0.5,
        [
            (c, {P + 'probe_connect_seconds{target="etcd:2379",role="etcd"}': const(v)}, f)
            for c, v, f in (("short", 0.49, False), ("at", 0.5, True), ("past", 0.51, True))
        ],
    ),
    ("dependency_slow", "dns_seconds"): (
        1.0,
        [
            (c, {P + 'probe_dns_seconds{target="etcd:2379",role="etcd"}': const(v)}, f)
            for c, v, f in (("short", 0.99, False), ("at", 1.0, True), ("past", 1.01, True))
        ],
    ),
    ("tcp_retransmits_high", "ratio"): (
        0.1,
        [
            (c, retransmits(r, 10000), f)
            for c, r, f in (("short", 0.09, False), ("at", 0.1, True), ("past", 0.11, True))
        ],
    ),
    ("tcp_retransmits_high", "min_segments"): (
        5000,
        [
            (c, retransmits(0.5, n), f)
            for c, n, f in (("short", 4980, False), ("at", 5000, True), ("past", 5020, True))
        ],
    ),
    ("close_wait_leak", "sockets"): (
        100,
        [
            (c, {P + 'tcp_sockets{state="close_wait",peer="nats",direction="out"}': const(v)}, f)
            for c, v, f in (("short", 99, False), ("at", 100, True), ("past", 101, True))
        ],
    ),
    ("memory_budget", "ratio"): (
        0.5,
        [
            (c, share(P + "memory_budget_used_bytes", P + "memory_budget_bytes", v), f)
            for c, v, f in (("short", 49, False), ("at", 50, True), ("past", 51, True))
        ],
    ),
    **queue_cases(),
}

# Bands one rule takes from another's thresholds: queue_growing judges the GPU utilization
# between queue_growing_gpu_idle.idle and queue_growing_saturated.busy.
CROSS = [
    ("queue_growing", {"queue_growing_saturated.busy": 0.6}, "busy-moved-below", queue(20, 0.7), False),
    ("queue_growing", {"queue_growing_saturated.busy": 0.6}, "in-band", queue(20, 0.5), True),
    ("queue_growing", {"queue_growing_gpu_idle.idle": 0.6}, "idle-moved-above", queue(20, 0.5), False),
]


def fleet_thresholds() -> set[tuple[str, str]]:
    return {
        (rule.id, t.name)
        for rule in RULES
        if rule.fleet is not None
        for t in rule.thresholds
        if not t.pod_only
    }


def test_every_fleet_threshold_has_a_case() -> None:
    assert set(CASES) == fleet_thresholds()
    for (rule_id, name), (value, _) in CASES.items():
        default = next(t.default for r in RULES if r.id == rule_id for t in r.thresholds if t.name == name)
        assert value != default, (rule_id, name)


def test_alerts_are_their_fleet_queries_with_the_same_overrides() -> None:
    overrides = {f"{rule}.{name}": value for (rule, name), (value, _) in CASES.items()}
    queries = fleet_queries(overrides=overrides)
    names = {
        rule.alert.name: rule.id for rule in RULES if rule.alert is not None and hasattr(rule.alert, "name")
    }
    for entry in alert_rules(overrides):
        assert entry["expr"] == queries[names[entry["alert"]]]
    # And the override is visible where a user reads it.
    assert "restarts_total" in alerts_yaml({"worker_restarted.restarts": 3})
    assert "[15m]) >= 3" in fleet_queries(overrides={"worker_restarted.restarts": 3})["worker_restarted"]


def _alert_of(rule_id: str) -> str:
    rule = next(r for r in RULES if r.id == rule_id)
    return getattr(rule.alert, "name", "")


def _input(series: Series) -> list[dict[str, str]]:
    out = []
    for spec, values in series.items():
        name, brace, labels = spec.partition("{")
        labels = labels.rstrip("}") if brace else ""
        full = 'namespace="ns",pod="p"' + ("," + labels if labels else "")
        out.append({"series": f"{name}{{{full}}}", "values": " ".join(f"{v:g}" for v in values)})
    return out


def _groups() -> list[tuple[str, str, dict[str, float], Series, bool]]:
    out = []
    for (rule_id, name), (value, cases) in CASES.items():
        for case, series, fires in cases:
            out.append(
                (rule_id, f"{rule_id}.{name}={value:g} {case}", {f"{rule_id}.{name}": value}, series, fires)
            )
    for rule_id, overrides, case, series, fires in CROSS:
        out.append((rule_id, f"{rule_id} {overrides} {case}", overrides, series, fires))
    return out


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
)
def test_alerts_at_and_past_each_overridden_threshold(tmp_path: Path) -> None:
    """One promtool run: per case, the generated alert expression (its `for` aside: that is the
    alert's own wait) evaluated on the case's series at the end, as count(...) or vector(0)."""
    tests: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    for rule_id, title, overrides, series, fires in _groups():
        alert = _alert_of(rule_id)
        expr = (
            next(e["expr"] for e in alert_rules(overrides) if e["alert"] == alert)
            if alert
            else fleet_queries(overrides=overrides)[rule_id]
        )
        # The whole file as a user generates it (one per set of overrides), checked by promtool.
        key = f"alerts-{'-'.join(sorted(overrides))}.yaml"
        if key not in files:
            files[key] = alerts_yaml(overrides)
        tests.append(
            {
                "name": title,
                "interval": f"{STEP}s",
                "input_series": _input(series),
                "promql_expr_test": [
                    {
                        "expr": f"count({expr}) > 0 or vector(0)",
                        "eval_time": f"{END}s",
                        "exp_samples": [{"labels": "{}", "value": 1 if fires else 0}],
                    }
                ],
            }
        )
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    check = subprocess.run(
        ["promtool", "check", "rules", *sorted(files)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, (check.stdout + check.stderr)[-3000:]
    # The expressions are tested by themselves: no rule file to evaluate at every step.
    (tmp_path / "none.yaml").write_text("groups: []\n")
    spec = {"rule_files": ["none.yaml"], "evaluation_interval": f"{STEP}s", "tests": tests}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, width=1000))
    result = subprocess.run(
        ["promtool", "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert len(tests) >= 3 * len(CASES)


# --- the pod view on the same series, where it reads samples ------------------------------------

POD_SAMPLED = {"cpu_throttled", "memory_near_limit", "memory_pressure", "request_failures"}


def _pod_fires(rule_id: str, overrides: dict[str, float], series: Series) -> bool:
    from agent.config import load_config
    from agent.core.samples import CollectResult, Sample, labels_from_dict
    from agent.core.signals import DynamoNames, compute
    from agent.core.state import State
    from agent.diagnose.context import Context
    from agent.diagnose.engine import evaluate

    now = 100_000.0
    state = State(history_window=900, min_interval=STEP)
    state.started = now - 3600
    for step in range(STEPS):
        samples = []
        for spec, values in series.items():
            name, _, labels = spec.partition("{")
            pairs = dict(p.split("=", 1) for p in labels.rstrip("}").split(",") if p)
            samples.append(
                Sample(name, labels_from_dict({k: v.strip('"') for k, v in pairs.items()}), values[step])
            )
        state.update("spec", CollectResult(samples=samples), now=now - END + step * STEP)
    thresholds = ",".join(f"{k}={v:g}" for k, v in overrides.items())
    config = load_config(environ={}, overrides={"startup_grace": "0", "thresholds": thresholds})
    names = DynamoNames()
    ctx = Context(state, config, compute(state, names, config.signal_window, now), now=now, names=names)
    return rule_id in {f.rule for f in evaluate(ctx)[0]}


POD_CASES = [g for g in _groups() if g[0] in POD_SAMPLED]


@pytest.mark.parametrize(
    ("rule_id", "title", "overrides", "series", "fires"), POD_CASES, ids=[g[1] for g in POD_CASES]
)
def test_pod_view_agrees_with_the_alert_at_each_overridden_threshold(
    rule_id: str, title: str, overrides: dict[str, float], series: Series, fires: bool
) -> None:
    assert _pod_fires(rule_id, overrides, series) is fires


# --- which findings page -----------------------------------------------------------------------


def test_every_critical_rule_pages_or_says_why() -> None:
    from agent.diagnose.model import Alert, NoAlert
    from agent.tools.docs import rules_reference

    reference = rules_reference()
    table = reference.split("## Which findings page", 1)[1].split("\n## ", 1)[0]
    for rule in RULES:
        if rule.severity == "critical":
            assert isinstance(rule.alert, Alert | NoAlert), rule.id
            if isinstance(rule.alert, NoAlert):
                assert len(rule.alert.reason) > 40, rule.id
        row = next(line for line in table.splitlines() if line.startswith(f"| `{rule.id}` |"))
        if isinstance(rule.alert, Alert):
            assert f"`{rule.alert.name}`" in row
        else:
            assert "none" in row


def test_alerts_command_for_users_with_overrides() -> None:
    from tests.procs import ENV, PYTHON

    out = subprocess.run(
        [PYTHON, "-m", "agent.cli", "alerts", "--thresholds", "worker_restarted.restarts=3"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert out.returncode == 0, out.stderr
    document = yaml.safe_load(out.stdout)
    alerts = {rule["alert"]: rule for rule in document["groups"][0]["rules"]}
    assert alerts["DynamoEngineHung"]["labels"]["severity"] == "critical"
    assert alerts["DynamoEngineHung"]["annotations"]["diagnose"] == "engine_hung"
    assert alerts["DynamoWorkerRestarting"]["expr"].endswith("[15m]) >= 3")
    header = out.stdout.split("groups:", 1)[0]
    # Written for the user who keeps the file, not for this repository's developers.
    for developer_note in ("GENERATED", "do not edit", "a test fails", "agent/diagnose"):
        assert developer_note not in header
    assert "worker_restarted.restarts=3" in header and "worker_registration_lost" in header
