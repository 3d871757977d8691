"""Regenerates the reference in docs/ from the code: `python -m agent.tools.docs`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from agent.config import reference_markdown
from agent.core.catalogue import markdown_table
from agent.core.handles import MODULE, generate_module


def rules_reference() -> str:
    """docs/rules.md: every rule record whole (thresholds, causal links, fleet query, alert)."""
    from agent.diagnose.engine import RULES
    from agent.diagnose.fleet import selector
    from agent.diagnose.model import Alert, NoAlert

    out = [
        "# Diagnose rules",
        "",
        "Generated from the rule records in `agent/diagnose/rules/` by `python -m agent.tools.docs`;",
        "a test fails when this file is stale. Each record holds the pod predicate, its named",
        "thresholds, the fleet PromQL (`diagnose --prometheus-url`) and the Prometheus alert",
        "(`packaging/prometheus/alerts.yaml`), all over the same thresholds.",
        "",
        "Override a threshold with the config key `thresholds` (YAML mapping, or",
        "`DYN_SIDECAR_THRESHOLDS=rule.name=value,...`); `dynamo-sidecar alerts --config FILE`",
        "prints alert rules with the same overrides.",
        "",
        "Causal links: `rule` is the same subject, `rule:*` any subject, `rule:@role` a subject of",
        "the same role (frontend or worker). A cause is listed first with its symptoms folded",
        "under it and takes the severity of its worst symptom; a *state* (start-up, a drain)",
        "turns what it explains into info. Only findings that hold now are linked.",
        "",
        "A finding about events in its window (marked *past event* below) becomes info once the",
        "pod serves again after the last of them; when a condition stops holding, its finding",
        "is shown as resolved (info) for five minutes ([diagnose.md](diagnose.md#findings-over-time)).",
        "",
        "## Which findings page",
        "",
        "Every critical rule has a Prometheus alert (`packaging/prometheus/alerts.yaml`,",
        "`dynamo-sidecar alerts`) or says here why it cannot have one.",
        "",
        "| rule | severity | alert |",
        "| --- | --- | --- |",
    ]
    for rule in RULES:
        if isinstance(rule.alert, Alert):
            pages = f"`{rule.alert.name}`" + (f" (for {rule.alert.for_})" if rule.alert.for_ else "")
        elif isinstance(rule.alert, NoAlert):
            pages = "none: " + rule.alert.reason
        else:
            pages = "none" + (" (fleet query only)" if rule.fleet is not None else "")
        out.append(f"| `{rule.id}` | {rule.severity} | {pages} |")
    out.append("")
    sel = selector()
    for rule in RULES:
        out += [f"## `{rule.id}`", ""]
        kind = (
            ", a state (not a fault)"
            if rule.state
            else ", about events in a window: a past event once the pod serves after them"
            if rule.events
            else ""
        )
        out.append(f"{rule.category}, {rule.severity}{kind}.")
        out += ["", "Says: " + rule.summary.replace("{subject}", "<subject>"), ""]
        out += [f"{i}. {a}" for i, a in enumerate(rule.actions, 1)]
        out.append("")
        if rule.thresholds:
            out += ["| threshold | default | unit | meaning |", "| --- | --- | --- | --- |"]
            out += [
                f"| `{rule.id}.{t.name}` | {t.default:g} | {t.unit} | {t.help}"
                + (f" Pod view only {t.pod_only}." if t.pod_only and rule.fleet is not None else "")
                + " |"
                for t in rule.thresholds
            ]
            out.append("")
        if rule.explains:
            out += ["Explains: " + ", ".join(f"`{link}`" for link in rule.explains), ""]
        if rule.fleet is not None:
            out += ["Fleet query:", "", "```promql", rule.fleet(sel, rule.limits()), "```", ""]
        if isinstance(rule.alert, Alert):
            out += [
                f"Alert: `{rule.alert.name}`" + (f" (for {rule.alert.for_})" if rule.alert.for_ else ""),
                "",
            ]
        elif isinstance(rule.alert, NoAlert):
            out += ["No alert: " + rule.alert.reason, ""]
    return "\n".join(out)


SECTIONS = {"metrics-table": markdown_table, "config-table": reference_markdown}


# Which generated section lives in which file under docs/.
SECTION_FILES = {"metrics-table": "metrics.md", "config-table": "configuration.md"}


def update(docs: Path) -> bool:
    """Regenerate the generated sections, docs/rules.md and agent/core/metrics.py (the metric
    handles); True when anything changed."""
    changed = False
    for name, render in SECTIONS.items():
        path = docs / SECTION_FILES[name]
        text = path.read_text()
        pattern = re.compile(rf"<!-- {name} -->\n.*?<!-- /{name} -->", re.S)
        block = f"<!-- {name} -->\n{render()}\n<!-- /{name} -->"
        new = pattern.sub(block.replace("\\", "\\\\"), text)  # a replacement string, escapes kept
        if new != text:
            path.write_text(new)
            changed = True
    metrics = generate_module()
    if not MODULE.exists() or MODULE.read_text() != metrics:
        MODULE.write_text(metrics)
        changed = True
    rules = docs / "rules.md"
    if not rules.exists() or rules.read_text() != rules_reference():
        rules.write_text(rules_reference())
        changed = True
    return changed


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    print("updated" if update(root) else "up to date")
