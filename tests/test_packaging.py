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
