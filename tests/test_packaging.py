"""Alert rules: valid, unit-tested with promtool, and naming only metrics the sidecar emits."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest

from agent.core.catalogue import spec_for_sample
from agent.diagnose.engine import RULES
from tests.helpers import ROOT

ALERTS = ROOT / "packaging" / "prometheus"


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
)
def test_alert_rules_check_and_unit_tests() -> None:
    check = subprocess.run(
        ["promtool", "check", "rules", "alerts.yaml"], cwd=ALERTS, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yaml"],
        cwd=ALERTS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_alerts_use_catalogue_metrics_and_rule_ids() -> None:
    text = (ALERTS / "alerts.yaml").read_text()
    names = set(re.findall(r"\b(dynamo_sidecar_[a-z0-9_]+)", text))
    assert names
    assert {n for n in names if spec_for_sample(n) is None} == set()
    rule_ids = {rule.id for rule in RULES}
    for line in re.findall(r'diagnose: "([^"]+)"', text):
        for rule_id in line.split(" / "):
            assert rule_id in rule_ids, rule_id


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
)
def test_dashboard_queries_parse_and_use_catalogue_metrics(tmp_path) -> None:
    import json

    dashboard = json.loads((ROOT / "packaging" / "grafana" / "dynamo-sidecar.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    names = {n for expr in exprs for n in re.findall(r"\b(dynamo_sidecar_[a-z0-9_]+)", expr)}
    assert {n for n in names if spec_for_sample(n) is None} == set()
    # promtool parses every expression (as recording rules; $namespace as a literal regex).
    rules = tmp_path / "rules.yaml"
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for index, expr in enumerate(exprs):
        lines += [
            f"      - record: dashboard:panel{index}",
            f"        expr: {json.dumps(expr.replace('$namespace', '.*'))}",
        ]
    rules.write_text("\n".join(lines) + "\n")
    check = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


# --- pod view and fleet view on the same series, at and just past each threshold --------------

STEP = 15  # seconds between samples, in both views
STEPS = 25


def _cpu(ratio: float) -> dict[str, list[float]]:
    return {
        "dynamo_sidecar_cgroup_cpu_periods_total": [i * 100 for i in range(STEPS)],
        "dynamo_sidecar_cgroup_cpu_throttled_periods_total": [i * 100 * ratio for i in range(STEPS)],
    }


def _memory(usage: float) -> dict[str, list[float]]:
    return {
        "dynamo_sidecar_cgroup_memory_usage_bytes": [usage] * STEPS,
        "dynamo_sidecar_cgroup_memory_limit_bytes": [100.0] * STEPS,
    }


def _pressure(stall: float) -> dict[str, list[float]]:
    return {
        'dynamo_sidecar_pressure_stall_ratio{scope="cgroup",resource="memory",kind="some",window="60s"}': [
            stall
        ]
        * STEPS
    }


SAME_SERIES = [
    ("cpu_throttled", _cpu(0.25), False),
    ("cpu_throttled", _cpu(0.26), True),
    ("memory_near_limit", _memory(89), False),
    ("memory_near_limit", _memory(90), True),
    ("memory_pressure", _pressure(0.09), False),
    ("memory_pressure", _pressure(0.1), True),
]


def _pod_fires(rule_id: str, series: dict[str, list[float]]) -> bool:
    from agent.config import load_config
    from agent.core.samples import CollectResult, Sample, labels_from_dict
    from agent.core.signals import DynamoNames, compute
    from agent.core.state import State
    from agent.diagnose.context import Context
    from agent.diagnose.engine import evaluate

    now = 10_000.0
    state = State(history_window=900, min_interval=5)
    state.started = now - 3600
    for step in range(STEPS):
        samples = []
        for spec, values in series.items():
            name, _, labels = spec.partition("{")
            pairs = dict(p.split("=", 1) for p in labels.rstrip("}").split(",") if p)
            samples.append(
                Sample(name, labels_from_dict({k: v.strip('"') for k, v in pairs.items()}), values[step])
            )
        state.update("spec", CollectResult(samples=samples), now=now - (STEPS - 1 - step) * STEP)
    config = load_config(environ={}, overrides={"startup_grace": "0"})
    names = DynamoNames()
    ctx = Context(state, config, compute(state, names, config.signal_window, now), now=now, names=names)
    return rule_id in {f.rule for f in evaluate(ctx)[0]}


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
)
@pytest.mark.parametrize(("rule_id", "series", "fires"), SAME_SERIES)
def test_pod_and_fleet_views_agree_at_the_threshold(tmp_path, rule_id: str, series, fires: bool) -> None:
    import yaml

    from agent.diagnose.fleet import fleet_queries

    assert _pod_fires(rule_id, series) is fires, "pod view"
    rules = {"groups": [{"name": "fleet", "rules": [{"alert": "Fleet", "expr": fleet_queries()[rule_id]}]}]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    spec = {k if "{" in k else k + "{}": v for k, v in series.items()}
    expected: list[dict[str, Any]] = [{"exp_labels": {}}] if fires else []
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": f"{STEP}s",
        "tests": [
            {
                "interval": f"{STEP}s",
                "input_series": [
                    {"series": name, "values": " ".join(f"{v:g}" for v in values)}
                    for name, values in spec.items()
                ],
                "alert_rule_test": [
                    {"eval_time": f"{(STEPS - 1) * STEP}s", "alertname": "Fleet", "exp_alerts": expected}
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test))
    result = subprocess.run(
        ["promtool", "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    if fires and result.returncode != 0:
        # The alert carries the series' labels, which the test cannot know in advance: any
        # firing alert is the fleet view firing.
        assert 'alertname="Fleet"' in output.partition("got:[")[2], output
        return
    assert result.returncode == 0, f"fleet view: {result.stdout}{result.stderr}"
