"""Prometheus alerting rules generated from the rule records: an alert's expression is its
rule's fleet query over the rule's thresholds, so alerts, fleet scope and /diagnose agree.

`python -m agent.diagnose.alerts --write` writes the checked-in files (Prometheus rule_files
and the Helm chart's PrometheusRule source; a test fails when either is stale); `dynamo-sidecar alerts [--config FILE]` prints the
rules with a deployment's own threshold overrides.
"""

from __future__ import annotations

from typing import Any

import yaml

from agent.diagnose.engine import RULES
from agent.diagnose.fleet import selector
from agent.diagnose.model import Alert, NoAlert

HEADER = """\
# Prometheus alerting rules for Dynamo pods watched by dynamo-sidecar {version}.
# Each alert's expression is the fleet query of one diagnose rule, over the same thresholds
# the sidecar uses{overrides}; its `diagnose` annotation names the rule. When one fires,
# `dynamo-sidecar diagnose` on the pod (or `--prometheus-url` for every pod) gives the
# evidence and the actions. Load the file with Prometheus `rule_files:` or wrap it in a
# PrometheusRule. Regenerate it with `dynamo-sidecar alerts [--config FILE] > alerts.yaml`.
{unpaged}"""


def alert_rules(overrides: dict[str, float] | None = None) -> list[dict[str, Any]]:
    out = []
    sel = selector()
    for rule in RULES:
        if not isinstance(rule.alert, Alert) or rule.fleet is None:
            continue
        entry: dict[str, Any] = {"alert": rule.alert.name, "expr": rule.fleet(sel, rule.limits(overrides))}
        if rule.alert.for_:
            entry["for"] = rule.alert.for_
        entry["labels"] = {"severity": rule.severity.value, "category": rule.category.value}
        entry["annotations"] = {
            "summary": rule.alert.summary,
            "diagnose": rule.id,
        }
        # The first action that needs no per-finding value: an alert has no hit to fill it.
        action = next((a for a in rule.actions if "{" not in a and ": " not in a[:10]), "")
        if action:
            entry["annotations"]["action"] = action
        out.append(entry)
    return out


def _header(overrides: dict[str, float] | None) -> str:
    from agent import __version__

    given = ", ".join(f"{k}={v:g}" for k, v in sorted((overrides or {}).items()))
    unpaged = [f"#   {rule.id}: {rule.alert.reason}\n" for rule in RULES if isinstance(rule.alert, NoAlert)]
    return HEADER.format(
        version=__version__,
        overrides=f" (overridden here: {given})" if given else "",
        unpaged=("# Critical findings that cannot page, and why:\n" + "".join(unpaged)) if unpaged else "",
    )


def alerts_yaml(overrides: dict[str, float] | None = None) -> str:
    document = {"groups": [{"name": "dynamo-sidecar", "rules": alert_rules(overrides)}]}
    return _header(overrides) + yaml.safe_dump(document, sort_keys=False, width=1000, allow_unicode=True)


# The checked-in copies: Prometheus rule_files, and the Helm chart's PrometheusRule source.
ALERT_FILES = ("packaging/prometheus/alerts.yaml", "packaging/helm/dynamo-sidecar/files/alerts.yaml")

if __name__ == "__main__":
    import sys
    from pathlib import Path

    if "--write" in sys.argv[1:]:
        root = Path(__file__).resolve().parents[2]
        for relative in ALERT_FILES:
            (root / relative).write_text(alerts_yaml())
            print(f"wrote {relative}")
    else:
        print(alerts_yaml(), end="")
