"""The diagnose report as plain text (terminals, `dynamo-sidecar diagnose`) and as one
self-contained HTML page (no scripts, no external assets; opened through `kubectl
port-forward`). Both follow the report's `tree`: each cause with the findings it explains
nested under it, as the JSON has it; both show each finding's age and its life (active, a past
event, resolved)."""

from __future__ import annotations

import html
import json
import re
import time
from typing import Any

from agent.core.exitcodes import BY_STATUS
from agent.diagnose.model import duration_text

EXIT_CODES = BY_STATUS  # kept for callers that import it from here
DEFAULT_REFRESH = 15  # seconds between HTML reloads; ?refresh=0 stops them


def _when(timestamp: float) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _clock(timestamp: float) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(timestamp)) if timestamp else "-"


def ago(timestamp: float, now: float) -> str:
    """'2 min ago', '14s ago'; 'now' under a second."""
    if not timestamp:
        return "-"
    seconds = now - timestamp
    if seconds < 1:
        return "now"
    return f"{duration_text(seconds)} ago"


def _value(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))[:300]
    return str(value)


def life(finding: dict[str, Any], now: float) -> str:
    """The finding's place in its life, in words: when it began, or how it ended."""
    state = finding.get("state", "active")
    if state == "resolved":
        return (
            f"resolved {ago(finding['resolved_at'], now)} ({_clock(finding['resolved_at'])}) after "
            f"{duration_text(finding['duration_seconds'])}; began {_clock(finding['since'])}"
        )
    if state == "past":
        return (
            f"past: requests succeeded after it (the latest {ago(finding['served_at'], now)}); "
            f"last event {ago(finding.get('last_event_at', 0.0), now)}, began {_clock(finding['since'])}"
        )
    return f"since {_when(finding['since'])} ({ago(finding['since'], now)})"


def label(finding: dict[str, Any]) -> str:
    state = finding.get("state", "active")
    if state == "resolved":
        return f"RESOLVED, was {finding.get('was', '').upper()}"
    if state == "past":
        return f"PAST, was {finding.get('was', '').upper()}"
    return finding["severity"].upper()


def _nodes(report: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    """(finding, depth) in the report's order; a report without `tree` (an older sidecar) is flat."""
    by_id = {f["id"]: f for f in report["findings"]}
    out: list[tuple[dict[str, Any], int]] = []

    def walk(nodes: list[dict[str, Any]], depth: int) -> None:
        for node in nodes:
            if node["id"] in by_id:
                out.append((by_id[node["id"]], depth))
            walk(node.get("symptoms", []), depth + 1)

    if "tree" in report:
        walk(report["tree"], 0)
        shown = {f["id"] for f, _ in out}
        out += [(f, 0) for f in report["findings"] if f["id"] not in shown]
    else:
        out = [(f, 0) for f in report["findings"]]
    return out


def _counts(findings: list[dict[str, Any]]) -> str:
    active = [f for f in findings if f.get("state", "active") == "active"]
    parts = [
        f"{sum(f['severity'] == s for f in active)} {s}"
        for s in ("critical", "warning", "info")
        if any(f["severity"] == s for f in active)
    ]
    over = len(findings) - len(active)
    if over:
        parts.append(f"{over} resolved or past")
    return ", ".join(parts) or "no findings"


def text(report: dict[str, Any]) -> str:
    now = report["generated_at"]
    lines = [
        f"dynamo-sidecar diagnose: {report['status'].upper()}  "
        f"({_counts(report['findings'])}; window {report['window_seconds']:.0f}s, generated {_when(now)})",
    ]
    pod = report.get("pod", {})
    if pod.get("name"):
        lines.append(f"pod {pod.get('namespace') or '-'}/{pod['name']} on node {pod.get('node') or '-'}")
    for missing in report.get("unread", []):
        lines.append(f"NOT READ: {missing['source']}: {missing['error']}")
    lines.append("")
    if not report["findings"]:
        lines.append(
            "No findings in what could be read."
            if report.get("unread")
            else "No findings: nothing abnormal in what the sidecar observes."
        )
    for finding, depth in _nodes(report):
        pad = "    " * depth
        lead = f"{pad}{'└─ ' if depth else ''}"
        more = pad + ("   " if depth else "") + "  "
        lines.append(f"{lead}[{label(finding)}] {finding['summary']}")
        lines.append(f"{more}id: {finding['id']}  category: {finding['category']}  {life(finding, now)}")
        if finding["explained_by"]:
            lines.append(f"{more}explained by: {', '.join(finding['explained_by'])}")
        for evidence in finding["evidence"]:
            unit = f" {evidence['unit']}" if evidence.get("unit") else ""
            lines.append(f"{more}evidence: {evidence['signal']} = {_value(evidence['value'])}{unit}")
        if finding.get("state", "active") == "active":
            for index, action in enumerate(finding["actions"], 1):
                lines.append(f"{more}action {index}: {action}")
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
h1{font-size:1.4em} h2{font-size:1.1em;margin:.2em 0} h3{font-size:1em;margin:.2em 0}
.status{padding:.2em .6em;border-radius:.3em;color:#fff;font-size:.85em}
.status.ok{background:#2e7d32}.status.warning{background:#ef6c00}.status.critical{background:#c62828}
.status.info{background:#1565c0}.status.unknown{background:#616161}
.finding{border:1px solid #ccc;border-left:.4em solid #999;padding:.6em 1em;margin:1em 0}
.finding.critical{border-left-color:#c62828}.finding.warning{border-left-color:#ef6c00}.finding.info{border-left-color:#1565c0}
.finding.resolved,.finding.past{border-left-color:#9e9e9e;color:#555}
.symptoms{margin:.6em 0 0 1em} .symptoms>summary{cursor:pointer;color:#333}
.symptoms .finding{margin:.5em 0;padding:.4em .8em}
table{border-collapse:collapse;table-layout:fixed;width:100%} td,th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left;vertical-align:top;overflow-wrap:anywhere}
code{background:#f4f4f4;padding:0 .2em;font-family:ui-monospace,monospace} .muted{color:#777}
.unread{background:#fff3e0;border:1px solid #ef6c00;padding:.4em 1em}
"""

_CODE = re.compile(r"`([^`\n]+)`")


def rich(text_: str) -> str:
    """Escaped text with `code` spans as <code>: actions quote commands that way."""
    out, last = [], 0
    for match in _CODE.finditer(text_):
        out.append(html.escape(text_[last : match.start()]))
        out.append(f"<code>{html.escape(match.group(1))}</code>")
        last = match.end()
    out.append(html.escape(text_[last:]))
    return "".join(out)


def _card(finding: dict[str, Any], now: float, heading: str) -> list[str]:
    e = html.escape
    state = finding.get("state", "active")
    severity = e(finding["severity"])
    parts = [
        f"<div class='finding {severity} {e(state)}' data-id='{e(finding['id'])}' data-severity='{severity}' "
        f"data-state='{e(state)}' id='f-{e(finding['id'])}'>",
        f"<{heading}><span class='status {severity}'>{e(label(finding))}</span> {rich(finding['summary'])}</{heading}>",
        f"<p class='muted'>id <code>{e(finding['id'])}</code> &middot; {e(finding['category'])} &middot; "
        f"<span class='age' title='{e(_when(finding['since']))}'>{e(life(finding, now))}</span></p>",
    ]
    if finding["explained_by"]:
        causes = ", ".join(f"<a href='#f-{e(c)}'><code>{e(c)}</code></a>" for c in finding["explained_by"])
        parts.append(f"<p>Explained by {causes}</p>")
    rows = "".join(
        f"<tr><td><code>{e(ev['signal'])}</code></td><td>{e(_value(ev['value']))}"
        f"{e(' ' + ev['unit'] if ev.get('unit') else '')}</td>"
        f"<td title='{e(_when(ev['timestamp']))}'>{e(ago(ev['timestamp'], now))}</td></tr>"
        for ev in finding["evidence"]
    )
    table = f"<table><tr><th>evidence</th><th>value</th><th>at</th></tr>{rows}</table>"
    if state == "active":
        parts.append(table)
        parts.append("<ol>" + "".join(f"<li>{rich(a)}</li>" for a in finding["actions"]) + "</ol>")
    else:
        parts.append(f"<details><summary>evidence ({len(finding['evidence'])})</summary>{table}</details>")
    return parts


def page(report: dict[str, Any], refresh: int = DEFAULT_REFRESH) -> str:
    e = html.escape
    now = report["generated_at"]
    status = e(report["status"])
    head = [
        "<!doctype html><html><head><meta charset='utf-8'><title>dynamo-sidecar diagnose</title>",
    ]
    if refresh > 0:
        head.append(f"<meta http-equiv='refresh' content='{refresh}'>")
    reload = (
        f"reloads every {refresh}s (<a href='?format=html&amp;refresh=0'>stop</a>)"
        if refresh > 0
        else f"auto-reload off (<a href='?format=html&amp;refresh={DEFAULT_REFRESH}'>on</a>)"
    )
    parts = [
        *head,
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>dynamo-sidecar diagnose <span class='status {status}' id='status'>{e(report['status'].upper())}</span></h1>",
        f"<p class='muted'>generated {e(_when(now))} &middot; window {report['window_seconds']:.0f}s &middot; "
        f"{e(_counts(report['findings']))} &middot; {reload} &middot; "
        "<a href='?format=json'>JSON</a> &middot; <a href='?format=text'>text</a></p>",
    ]
    if report.get("unread"):
        parts.append("<div class='unread' id='unread'><b>Not read</b><ul>")
        parts.extend(f"<li><code>{e(m['source'])}</code>: {e(m['error'])}</li>" for m in report["unread"])
        parts.append("</ul></div>")
    if not report["findings"]:
        parts.append("<p id='no-findings'>No findings: nothing abnormal in what the sidecar observes.</p>")
    by_id = {f["id"]: f for f in report["findings"]}
    tree = report.get("tree") or [{"id": f["id"], "symptoms": []} for f in report["findings"]]
    present = [n for n in tree if by_id.get(n["id"], {}).get("state", "active") == "active"]
    over = [n for n in tree if n not in present]

    def render(node: dict[str, Any], depth: int) -> list[str]:
        finding = by_id.get(node["id"])
        if finding is None:
            return []
        out = _card(finding, now, "h2" if depth == 0 else "h3")
        symptoms = [s for s in node.get("symptoms", []) if s["id"] in by_id]
        if symptoms:
            names = ", ".join(f"<code>{e(s['id'])}</code>" for s in symptoms)
            out.append(
                f"<details class='symptoms'><summary>explains {len(symptoms)} "
                f"finding{'s' if len(symptoms) > 1 else ''}: {names}</summary>"
            )
            for symptom in symptoms:
                out.extend(render(symptom, depth + 1))
            out.append("</details>")
        out.append("</div>")
        return out

    for node in present:
        parts.extend(render(node, 0))
    if over:
        parts.append("<h2>Resolved and past events</h2>")
        parts.append(
            "<p class='muted'>What held earlier and holds no longer, or events the pod has served after: information, not faults.</p>"
        )
        for node in over:
            parts.extend(render(node, 1))
    parts.append("<h2>Root-cause walk</h2><ol>")
    for step in report.get("flow", []):
        parts.append(f"<li><b>{e(step['step'])}</b>")
        if "detail" in step:
            parts.append(f"<div>{rich(step['detail'])}</div>")
        parts.append(
            "<ul>" + "".join(f"<li>{rich(o)}</li>" for o in step.get("observations", [])) + "</ul></li>"
        )
    parts.append("</ol></body></html>")
    return "".join(parts)
