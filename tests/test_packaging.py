"""Alert rules: valid, unit-tested with promtool, and naming only metrics the sidecar emits."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from agent.catalogue import spec_for_sample
from agent.diagnose.engine import RULES
from tests.conftest import ROOT

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
