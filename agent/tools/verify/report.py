"""The drill's report as text, JSON or one self-contained HTML page (inline SVG, no assets)."""

from __future__ import annotations

import html
import json
from typing import Any

from agent.tools.verify.drill import PHASES


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 10 else f"{value:.1f}s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _quantiles(stats: dict[str, Any], key: str) -> str:
    values = stats[key]
    return " / ".join(_ms(values.get(q)) for q in ("p50", "p90", "p99"))


def _observed(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def text(report: dict[str, Any]) -> str:
    target = report["target"]
    lines = [
        f"verify {target['frontend_url']} model={target['model']} "
        f"{'stream' if target['stream'] else 'no-stream'} max_tokens={target['max_tokens']}: "
        + ("PASSED" if report["passed"] else "FAILED"),
        "",
    ]
    unread = (report.get("sidecar") or {}).get("unread_phases") or []
    if unread:
        lines[1:1] = [
            f"UNKNOWN: the sidecar at {target['sidecar_url']} could not be read in: {', '.join(unread)}"
        ]
    for phase in PHASES:
        stats = report["phases"][phase]
        lines.append(
            f"{phase} ({stats['end'] - stats['start']:.0f}s, {stats['concurrency']} clients): "
            f"{stats['requests']} requests, {_pct(stats['success_rate'])} ok, "
            f"{stats['tokens_per_second'] or 0:g} tokens/s"
        )
        lines.append(
            f"  latency p50/p90/p99 {_quantiles(stats, 'latency_seconds')}   "
            f"TTFT {_quantiles(stats, 'ttft_seconds')}   ITL {_quantiles(stats, 'itl_seconds')}"
        )
        if stats["errors_by_type"]:
            errors = ", ".join(f"{k} x{v}" for k, v in stats["errors_by_type"].items())
            lines.append(f"  errors: {errors}")
            for kind, example in stats["error_examples"].items():
                if example:
                    lines.append(f"    {kind}: {example[:140]}")
        ttft = stats["dynamo_histograms"].get("ttft")
        if ttft and "quantiles" in ttft:
            p99 = ttft["quantiles"]["p99"]
            low, high = p99["dynamo_bucket"]
            verdict = {True: "agrees", False: "DISAGREES", None: "-"}[p99["agrees"]]
            lines.append(
                f"  Dynamo's TTFT histogram ({ttft['count']} requests): p99 in ({low:g}, {high if high is not None else 'inf'}] s;"
                f" client p99 {_ms(p99['client'])}: {verdict}"
            )
        reads = stats.get("sidecar_reads")
        if reads is not None and not reads["answered"]:
            lines.append(
                f"  sidecar: NOT READ in this phase ({reads['failed']} polls failed: {reads['last_error'] or 'no poll'})"
            )
        elif stats["findings"] is not None:
            if stats["findings"]:
                for finding in stats["findings"][:6]:
                    lines.append(
                        f"  sidecar +{finding['first_seen_in_phase']:.1f}s {finding['severity'].upper()} "
                        f"{finding['id']}: {finding['summary'][:120]}"
                    )
            else:
                lines.append("  sidecar: no findings")
        for command in report["commands"]:
            if command["phase"] == phase:
                state = "timed out" if command["timed_out"] else f"exit {command['returncode']}"
                lines.append(f"  ran at {command['started_at']:.1f}s: {command['command'][:100]} ({state})")
        lines.append("")
    recovery = report["recovery"]
    if recovery["recovered"]:
        lines.append(
            f"recovery: {recovery['seconds']:.2f}s from the recovery phase's start to {recovery['window_seconds']:g}s "
            f"at >= {_pct(recovery['target_success_rate'])} ok"
        )
    else:
        lines.append(
            f"recovery: not reached: no {recovery['window_seconds']:g}s window in the recovery phase at "
            f">= {_pct(recovery['target_success_rate'])} ok"
        )
    probe = report.get("connection_probe")
    if probe and probe.get("keepalive_extra_seconds") is not None:
        extra = probe["keepalive_extra_seconds"]
        lines.append(
            f"first token on a reused connection {_ms(probe['keepalive_ttft_p50'])} vs a new one "
            f"{_ms(probe['new_connection_ttft_p50'])} (p50 of {probe['requests_each']} each)"
            + (
                ": consistent with the frontend holding its first write after the headers until the"
                " client ACKs them (Nagle left on, the client's delayed ACK); Dynamo's TTFT histogram"
                " does not include this wait, clients on kept-alive connections do"
                if extra >= 0.02
                else ""
            )
        )
    sidecar = report.get("sidecar")
    if sidecar and sidecar["poll_errors"]:
        lines.append(
            f"sidecar polls: {sidecar['polls']} answered, {sidecar['poll_errors']} failed ({sidecar['last_error']})"
        )
    lines.append("")
    lines.append("checks:")
    for check in report["checks"]:
        mark = "ok  " if check["met"] else "FAIL"
        lines.append(
            f"  {mark} {check['check']} [{check['phase']}] target {check['target']}, observed {_observed(check['observed'])}"
        )
    if not report["checks"]:
        lines.append("  (no targets given)")
    return "\n".join(lines) + "\n"


def as_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=1) + "\n"


# --- HTML ----------------------------------------------------------------------------------

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 900, 320, 60, 60, 20, 40
COLOURS = {"standard": "#e8f0fe", "overload": "#fde8e8", "recovery": "#e6f4ea"}
SEVERITY_COLOURS = {"critical": "#c5221f", "warning": "#e37400", "info": "#5f6368"}


def _svg(report: dict[str, Any]) -> str:
    rows = report["timeline"]
    end = max([report["phases"]["recovery"]["end"], *(row["t"] + 1 for row in rows)])
    latencies = [row["latency_p99"] for row in rows if row["latency_p99"] is not None]
    top_latency = max(latencies, default=1.0) * 1.1 or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + plot_w * t / max(end, 1e-9)

    def y_latency(value: float) -> float:
        return TOP + plot_h * (1 - value / top_latency)

    def y_rate(value: float) -> float:
        return TOP + plot_h * (1 - value)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="latency and success rate over the drill">'
    ]
    for phase in PHASES:
        stats = report["phases"][phase]
        x0, x1 = x(stats["start"]), x(stats["end"])
        parts.append(
            f'<rect class="phase" data-phase="{phase}" x="{x0:.1f}" y="{TOP}" width="{max(0.0, x1 - x0):.1f}" '
            f'height="{plot_h}" fill="{COLOURS[phase]}"/>'
        )
        parts.append(f'<text x="{x0 + 4:.1f}" y="{TOP + 14}" font-size="12">{phase}</text>')
        parts.append(
            f'<line x1="{x0:.1f}" y1="{TOP}" x2="{x0:.1f}" y2="{TOP + plot_h}" stroke="#888" stroke-dasharray="4 3"/>'
        )
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>')
    for fraction in (0, 0.5, 1):
        parts.append(
            f'<text x="{LEFT - 6}" y="{y_latency(top_latency * fraction) + 4:.1f}" font-size="11" text-anchor="end">'
            f"{_ms(top_latency * fraction)}</text>"
        )
        parts.append(
            f'<text x="{WIDTH - RIGHT + 6}" y="{y_rate(fraction) + 4:.1f}" font-size="11">{fraction * 100:.0f}%</text>'
        )
    for second in range(0, int(end) + 1, max(1, int(end) // 10 or 1)):
        parts.append(
            f'<text x="{x(second):.1f}" y="{HEIGHT - BOTTOM + 16}" font-size="11" text-anchor="middle">{second}s</text>'
        )
    p99 = " ".join(
        f"{x(row['t'] + 0.5):.1f},{y_latency(row['latency_p99']):.1f}"
        for row in rows
        if row["latency_p99"] is not None
    )
    p50 = " ".join(
        f"{x(row['t'] + 0.5):.1f},{y_latency(row['latency_p50']):.1f}"
        for row in rows
        if row["latency_p50"] is not None
    )
    rate = " ".join(
        f"{x(row['t'] + 0.5):.1f},{y_rate(row['successes'] / row['requests']):.1f}"
        for row in rows
        if row["requests"]
    )
    parts.append(
        f'<polyline class="latency-p99" points="{p99}" fill="none" stroke="#1a73e8" stroke-width="2"/>'
    )
    parts.append(
        f'<polyline class="latency-p50" points="{p50}" fill="none" stroke="#8ab4f8" stroke-width="1.5"/>'
    )
    parts.append(
        f'<polyline class="success-rate" points="{rate}" fill="none" stroke="#188038" stroke-width="2"/>'
    )
    marked: set[str] = set()
    for phase in PHASES:
        for finding in report["phases"][phase]["findings"] or []:
            if finding["id"] in marked:
                continue
            marked.add(finding["id"])
            when = report["phases"][phase]["start"] + finding["first_seen_in_phase"]
            colour = SEVERITY_COLOURS.get(finding["severity"], "#5f6368")
            parts.append(
                f'<g class="finding" data-id="{html.escape(finding["id"])}"><circle cx="{x(when):.1f}" cy="{TOP + plot_h - 8}" r="5" fill="{colour}">'
                f"<title>{html.escape(finding['id'])} ({finding['severity']}) at {when:.1f}s: {html.escape(finding['summary'])}</title></circle>"
                f'<text x="{x(when) + 7:.1f}" y="{TOP + plot_h - 14 - 12 * (len(marked) % 4)}" font-size="11" fill="{colour}">'
                f"{html.escape(finding['id'])}</text></g>"
            )
    for command in report["commands"]:
        cx = x(command["started_at"])
        parts.append(
            f'<g class="command"><line x1="{cx:.1f}" y1="{TOP}" x2="{cx:.1f}" y2="{TOP + plot_h}" stroke="#c5221f" stroke-width="1.5"/>'
            f"<title>{html.escape(command['command'])}</title></g>"
        )
    parts.append(
        f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="11" fill="#1a73e8">latency p99 (p50 lighter), left axis</text>'
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" font-size="11" fill="#188038" text-anchor="end">success rate, right axis</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def as_html(report: dict[str, Any]) -> str:
    target = report["target"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    rows = []
    for phase in PHASES:
        stats = report["phases"][phase]
        findings = stats["findings"]
        reads = stats.get("sidecar_reads")
        listed = (
            "not polled"
            if findings is None
            else f"NOT READ ({reads['failed']} polls failed)"
            if reads is not None and not reads["answered"]
            else ", ".join(f"{f['id']} ({f['severity']}, +{f['first_seen_in_phase']:.1f}s)" for f in findings)
            or "none"
        )
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(cell))}</td>"
                for cell in (
                    phase,
                    stats["requests"],
                    _pct(stats["success_rate"]),
                    _quantiles(stats, "latency_seconds"),
                    _quantiles(stats, "ttft_seconds"),
                    _quantiles(stats, "itl_seconds"),
                    stats["tokens_per_second"],
                    ", ".join(f"{k} x{v}" for k, v in stats["errors_by_type"].items()) or "none",
                    listed,
                )
            )
            + "</tr>"
        )
    checks = "".join(
        f'<tr class="{"met" if c["met"] else "missed"}"><td>{"ok" if c["met"] else "FAIL"}</td>'
        f"<td>{html.escape(c['check'])}</td><td>{html.escape(c['phase'])}</td>"
        f"<td>{html.escape(str(c['target']))}</td><td>{html.escape(_observed(c['observed']))}</td></tr>"
        for c in report["checks"]
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>dynamo-sidecar verify: {verdict}</title>"
        "<style>body{font-family:sans-serif;margin:24px;color:#202124}table{border-collapse:collapse;margin:12px 0}"
        "td,th{border:1px solid #dadce0;padding:4px 8px;font-size:13px;text-align:left}"
        ".missed td{background:#fce8e6}.met td:first-child{color:#188038}pre{background:#f8f9fa;padding:8px}</style>"
        "</head><body>"
        f"<h1>verify: {verdict}</h1>"
        + "".join(
            f"<p class='unread'>UNKNOWN: the sidecar could not be read in the {html.escape(p)} phase</p>"
            for p in (report.get("sidecar") or {}).get("unread_phases") or []
        )
        + f"<p>{html.escape(target['frontend_url'])}, model {html.escape(target['model'])}, "
        f"{'streaming' if target['stream'] else 'not streaming'}, max_tokens {target['max_tokens']}</p>"
        f"{_svg(report)}"
        "<table><tr><th>phase</th><th>requests</th><th>success</th><th>latency p50/p90/p99</th><th>TTFT</th>"
        "<th>ITL</th><th>tokens/s</th><th>errors</th><th>sidecar findings</th></tr>"
        + "".join(rows)
        + "</table><h2>checks</h2><table><tr><th></th><th>check</th><th>phase</th><th>target</th><th>observed</th></tr>"
        + checks
        + "</table>"
        + f"<h2>text report</h2><pre>{html.escape(text(report))}</pre>"
        + "</body></html>\n"
    )


def render(report: dict[str, Any], form: str) -> str:
    return {"text": text, "json": as_json, "html": as_html}[form](report)
