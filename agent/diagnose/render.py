"""The diagnose report as plain text (terminals, `dynamo-sidecar diagnose`) and as one
self-contained HTML page (no external assets; opened through `kubectl port-forward`)."""

from __future__ import annotations

import html
import json
import time
from typing import Any

# Report status -> exit code: the one table in agent/exitcodes.py, under the name callers use.
from agent.exitcodes import BY_STATUS as EXIT_CODES  # noqa: F401


def _when(timestamp: float) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _value(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))[:300]
    return str(value)


def text(report: dict[str, Any]) -> str:
    lines = [
        f"dynamo-sidecar diagnose: {report['status'].upper()}  "
        f"({len(report['findings'])} findings, window {report['window_seconds']:.0f}s, generated {_when(report['generated_at'])})",
    ]
    pod = report.get("pod", {})
    if pod.get("name"):
        lines.append(f"pod {pod.get('namespace') or '-'}/{pod['name']} on node {pod.get('node') or '-'}")
    lines.append("")
    if not report["findings"]:
        lines.append("No findings: nothing abnormal in what the sidecar observes.")
    for finding in report["findings"]:
        lines.append(f"[{finding['severity'].upper()}] {finding['summary']}")
        lines.append(
            f"  id: {finding['id']}  category: {finding['category']}  since: {_when(finding['since'])}"
        )
        if finding["explained_by"]:
            lines.append(f"  explained by: {', '.join(finding['explained_by'])}")
        for evidence in finding["evidence"]:
            unit = f" {evidence['unit']}" if evidence.get("unit") else ""
            lines.append(f"  evidence: {evidence['signal']} = {_value(evidence['value'])}{unit}")
        for index, action in enumerate(finding["actions"], 1):
            lines.append(f"  action {index}: {action}")
        lines.append("")
    lines.append("Root-cause walk:")
    for number, step in enumerate(report.get("flow", []), 1):
        lines.append(f"  {number}. {step['step']}")
        if "detail" in step:
            lines.append(f"     {step['detail']}")
        for observation in step.get("observations", []):
            lines.append(f"     - {observation}")
    return "\n".join(lines) + "\n"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
h1{font-size:1.4em} .status{padding:.2em .6em;border-radius:.3em;color:#fff}
.status.ok{background:#2e7d32}.status.warning{background:#ef6c00}.status.critical{background:#c62828}.status.info{background:#1565c0}
.finding{border:1px solid #ccc;border-left:.4em solid #999;padding:.6em 1em;margin:1em 0}
.finding.critical{border-left-color:#c62828}.finding.warning{border-left-color:#ef6c00}.finding.info{border-left-color:#1565c0}
table{border-collapse:collapse;table-layout:fixed;width:100%} td,th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left;vertical-align:top;overflow-wrap:anywhere}
code{background:#f4f4f4;padding:0 .2em} .muted{color:#777}
"""


def page(report: dict[str, Any]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>dynamo-sidecar diagnose</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>dynamo-sidecar diagnose <span class='status {e(report['status'])}' id='status'>{e(report['status'].upper())}</span></h1>",
        f"<p class='muted'>generated {e(_when(report['generated_at']))} &middot; window {report['window_seconds']:.0f}s &middot; "
        f"{len(report['findings'])} findings &middot; <a href='?format=json'>JSON</a> &middot; <a href='?format=text'>text</a></p>",
    ]
    if not report["findings"]:
        parts.append("<p id='no-findings'>No findings: nothing abnormal in what the sidecar observes.</p>")
    for finding in report["findings"]:
        severity = e(finding["severity"])
        parts.append(
            f"<div class='finding {severity}' data-id='{e(finding['id'])}' data-severity='{severity}'>"
        )
        parts.append(
            f"<h2><span class='status {severity}'>{severity.upper()}</span> {e(finding['summary'])}</h2>"
        )
        parts.append(
            f"<p class='muted'>id <code>{e(finding['id'])}</code> &middot; {e(finding['category'])} &middot; since {e(_when(finding['since']))}</p>"
        )
        if finding["explained_by"]:
            parts.append(f"<p>Explained by: {e(', '.join(finding['explained_by']))}</p>")
        parts.append("<table><tr><th>evidence</th><th>value</th><th>at</th></tr>")
        for evidence in finding["evidence"]:
            unit = f" {evidence['unit']}" if evidence.get("unit") else ""
            parts.append(
                f"<tr><td><code>{e(evidence['signal'])}</code></td><td>{e(_value(evidence['value']))}{e(unit)}</td><td>{e(_when(evidence['timestamp']))}</td></tr>"
            )
        parts.append("</table><ol>")
        parts.extend(f"<li>{e(action)}</li>" for action in finding["actions"])
        parts.append("</ol></div>")
    parts.append("<h2>Root-cause walk</h2><ol>")
    for step in report.get("flow", []):
        parts.append(f"<li><b>{e(step['step'])}</b>")
        if "detail" in step:
            parts.append(f"<div>{e(step['detail'])}</div>")
        parts.append(
            "<ul>" + "".join(f"<li>{e(o)}</li>" for o in step.get("observations", [])) + "</ul></li>"
        )
    parts.append("</ol></body></html>")
    return "".join(parts)
