"""`dynamo-sidecar audit`: preventive configuration review and capacity risk, Dynamo-aware.

`audit -f FILE` reads manifests (DynamoGraphDeployment, workloads, Pods, rendered Helm
output); `audit --live` runs inside the pod: its own pod spec from the Kubernetes API when
the service account may read it, and the running sidecar's observations (history, findings).
Findings have the `/diagnose` shape, so the same tools read both.
"""

from __future__ import annotations

import html
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from agent.core import metrics as m
from agent.diagnose.model import SEVERITY_RANK, report_status
from agent.tools.audit.capacity import DURATION_BUCKETS, HISTORY_NAMES, forecast, max_observed, summed
from agent.tools.audit.checks import run_checks
from agent.tools.audit.manifest import ManifestError, UnknownKind, pod_units

SCHEMA_VERSION = 1
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
PROCESS_RSS = m.PROCESS_RESIDENT_MEMORY_BYTES.name


def _order(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(findings, key=lambda f: (-SEVERITY_RANK.get(f["severity"], 0), f["category"], f["id"]))


def report(
    findings: list[dict[str, Any]],
    notes: list[str],
    scope: str,
    extra: dict[str, Any] | None = None,
    unread: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """`unread`: what the audit could not read. With nothing at warning or above the status is
    then "unknown" (exit 3), never "ok" for a check it did not make."""
    ordered = _order(findings)
    return {
        "version": SCHEMA_VERSION,
        "kind": "dynamo-sidecar audit",
        "scope": scope,
        "status": report_status([f["severity"] for f in ordered], bool(unread)),
        "generated_at": round(time.time(), 3),
        "findings": ordered,
        "notes": notes,
        "unread": list(unread or []),
        **(extra or {}),
    }


def audit_documents(documents: list[Any], live: dict[str, Any] | None = None) -> dict[str, Any]:
    notes: list[str] = []
    units = []
    unknown: list[UnknownKind] = []
    for document in documents:
        try:
            units.extend(pod_units(document, notes))
        except UnknownKind as exc:
            unknown.append(exc)
    if unknown and len(unknown) == len([d for d in documents if d is not None]):
        raise unknown[0]  # nothing in the input is a kind audit reads: say so, not "ok"
    notes.extend(f"{exc}; skipped" for exc in unknown)
    if not units:
        notes.append("no Dynamo frontend or worker pods found in the input")
    return report(run_checks(units, live), notes, "manifest", {"pods": [u.where for u in units]})


# --- live ------------------------------------------------------------------------------------


def _get_json(
    url: str, timeout: float, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
) -> Any:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return json.loads(response.read(8 << 20))


def own_pod_spec(api_url: str, timeout: float) -> tuple[dict[str, Any] | None, str]:
    """(the pod object, why not) from the API server with the pod's service account."""
    name, namespace = os.environ.get("POD_NAME", ""), os.environ.get("POD_NAMESPACE", "")
    if not namespace and (SERVICE_ACCOUNT / "namespace").exists():
        namespace = (SERVICE_ACCOUNT / "namespace").read_text().strip()
    if not name or not namespace:
        return (
            None,
            "POD_NAME / POD_NAMESPACE are not set (the injected sidecar has them from the downward API)",
        )
    if not api_url:
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST", ""),
            os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
        )
        if not host:
            return None, "not in a Kubernetes pod (KUBERNETES_SERVICE_HOST unset) and no --kube-api given"
        api_url = f"https://{host}:{port}"
    headers = {}
    token_file = SERVICE_ACCOUNT / "token"
    if token_file.exists():
        headers["Authorization"] = "Bearer " + token_file.read_text().strip()
    context = None
    if api_url.startswith("https"):
        ca = SERVICE_ACCOUNT / "ca.crt"
        context = ssl.create_default_context(cafile=str(ca) if ca.exists() else None)
    url = f"{api_url.rstrip('/')}/api/v1/namespaces/{urllib.parse.quote(namespace)}/pods/{urllib.parse.quote(name)}"
    try:
        return _get_json(url, timeout, headers, context), ""
    except urllib.error.HTTPError as exc:
        reason = (
            "the service account may not read pods (RBAC: get pods in this namespace)"
            if exc.code == 403
            else f"HTTP {exc.code}"
        )
        return None, f"cannot read the pod spec from {api_url}: {reason}"
    except (OSError, ValueError) as exc:
        return None, f"cannot read the pod spec from {api_url}: {getattr(exc, 'reason', exc)}"


def _sidecar_token() -> str:
    """The sidecar's bearer token when audit runs in its container (from its env or file):
    /history answers loopback callers without it, unless auth_require_token is set."""
    token = os.environ.get("DYN_SIDECAR_AUTH_TOKEN", "")
    path = os.environ.get("DYN_SIDECAR_AUTH_TOKEN_FILE", "")
    if not token and path:
        try:
            with open(path, encoding="utf-8") as handle:
                token = handle.read(4096).strip()
        except OSError:
            token = ""
    return token


def _history(url: str, timeout: float, pages: int = 16) -> Any:
    """/history, its pages (?offset=next_offset) merged into one answer."""
    token = _sidecar_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    history = _get_json(url, timeout, headers)
    for _ in range(pages - 1):
        offset = history.get("next_offset") if isinstance(history, dict) else None
        if not isinstance(offset, int):
            break
        more = _get_json(f"{url}&offset={offset}", timeout, headers)
        for name, entries in (more.get("series") or {}).items():
            history.setdefault("series", {}).setdefault(name, []).extend(entries)
        history["next_offset"] = more.get("next_offset")
    return history


def observations(sidecar_url: str, timeout: float) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """(facts for the checks, the history, why not) from the running sidecar."""
    query = urllib.parse.urlencode([("name", name) for name in [*HISTORY_NAMES, PROCESS_RSS]])
    try:
        history = _history(f"{sidecar_url}/history?{query}", timeout)
        diagnose = _get_json(f"{sidecar_url}/diagnose?format=json", timeout)
        status = _get_json(f"{sidecar_url}/status", timeout)
    except (OSError, ValueError) as exc:
        return {}, None, f"cannot read the sidecar at {sidecar_url}: {getattr(exc, 'reason', exc)}"
    series = history.get("series") or {}
    facts: dict[str, Any] = {"in_pod": True, "status": status}
    longest = max_observed(series.get(DURATION_BUCKETS) or [])
    if longest is not None:
        facts["request_duration_max"] = longest
    # The Dynamo processes together, at each reading: their peak is what a limit must hold.
    rss = summed(series.get(PROCESS_RSS) or [])
    if rss:
        facts["memory_peak_bytes"] = max(value for _, value in rss)
    throttled = [f for f in diagnose.get("findings") or [] if str(f.get("rule")) == "cpu_throttled"]
    if throttled:
        facts["cpu_throttled"] = throttled[0].get("summary", "")[:200]
    return facts, history, ""


def audit_live(
    sidecar_url: str,
    api_url: str,
    timeout: float,
    min_history: float,
    queue_limit: float,
    inflight_limit: float | None,
    slo_ttft_p99: float | None,
    trend_window: float | None = None,
) -> dict[str, Any]:
    notes: list[str] = []
    unread: list[dict[str, str]] = []
    facts, history, why = observations(sidecar_url, timeout)
    if why:
        notes.append(why + "; no observations, no capacity forecast")
        unread.append({"source": "sidecar", "error": why})
    pod, why_not = own_pod_spec(api_url, timeout)
    units = []
    if pod is None:
        notes.append(f"configuration not checked: {why_not}")
        unread.append({"source": "pod spec", "error": why_not})
    else:
        units = pod_units(pod, notes)
    findings = run_checks(units, facts)
    fits: dict[str, Any] = {}
    if history is not None:
        config = (facts.get("status") or {}).get("config") or {}
        slo = slo_ttft_p99 or (float(config["slo_ttft_p99"]) if config.get("slo_ttft_p99") else None)
        capacity, fits = forecast(history, min_history, queue_limit, inflight_limit, slo, trend_window)
        findings.extend(capacity)
    return report(findings, notes, "live", {"pods": [u.where for u in units], "capacity_fits": fits}, unread)


# --- rendering -------------------------------------------------------------------------------


def text(result: dict[str, Any]) -> str:
    findings = result["findings"]
    lines = [
        f"dynamo-sidecar audit ({result['scope']}): {result['status'].upper()}  ({len(findings)} findings)"
    ]
    if result.get("pods"):
        lines.append("pods: " + "; ".join(result["pods"]))
    for missing in result.get("unread", []):
        lines.append(f"NOT READ: {missing['source']}: {missing['error']}")
    lines.append("")
    if not findings:
        lines.append("No findings in what could be read." if result.get("unread") else "No findings.")
    for finding in findings:
        lines.append(f"[{finding['severity'].upper()}] {finding['summary']}")
        lines.append(f"  id: {finding['id']}  category: {finding['category']}")
        for evidence in finding["evidence"]:
            lines.append(f"  evidence: {evidence['signal']} = {json.dumps(evidence['value'])[:200]}")
        for number, action in enumerate(finding["actions"], 1):
            lines.append(f"  action {number}: {action}")
        lines.append("")
    fits = result.get("capacity_fits")
    if fits:
        lines.append("capacity trends (least-squares line over the history):")
        for name, fit in fits.items():
            if fit is None:
                lines.append(f"  {name}: no data")
            else:
                lines.append(
                    f"  {name}: {fit['slope_per_minute']:+.4g}/min over {fit['span_seconds']:.0f}s, "
                    f"{fit['points']} points, r^2 {fit['r2']:.2f}, now ~{fit['value_now_fitted']:.4g}"
                )
        lines.append("")
    for note in result["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines).rstrip() + "\n"


def page(result: dict[str, Any]) -> str:
    colours = {"critical": "#c5221f", "warning": "#e37400", "info": "#5f6368"}
    items = []
    for finding in result["findings"]:
        evidence = "".join(
            f"<li><code>{html.escape(e['signal'])}</code> = {html.escape(json.dumps(e['value'])[:200])}</li>"
            for e in finding["evidence"]
        )
        actions = "".join(f"<li>{html.escape(a)}</li>" for a in finding["actions"])
        items.append(
            f'<div class="finding {finding["severity"]}"><h3 style="color:{colours.get(finding["severity"], "#000")}">'
            f"[{finding['severity'].upper()}] {html.escape(finding['summary'])}</h3>"
            f"<p>{html.escape(finding['id'])} ({finding['category']})</p><ul>{evidence}</ul><ol>{actions}</ol></div>"
        )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result["notes"])
    unread = "".join(
        f"<li>NOT READ: {html.escape(m['source'])}: {html.escape(m['error'])}</li>"
        for m in result.get("unread", [])
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>dynamo-sidecar audit</title>'
        "<style>body{font-family:sans-serif;margin:24px}.finding{border-left:4px solid #dadce0;padding-left:12px}"
        ".critical{border-color:#c5221f}.warning{border-color:#e37400}</style></head><body>"
        f"<h1>audit ({html.escape(result['scope'])}): {result['status'].upper()}</h1>"
        + (f"<ul class='unread'>{unread}</ul>" if unread else "")
        + ("".join(items) or "<p>No findings.</p>")
        + f"<h2>notes</h2><ul>{notes}</ul><h2>text</h2><pre>{html.escape(text(result))}</pre></body></html>\n"
    )


def render(result: dict[str, Any], form: str) -> str:
    if form == "json":
        return json.dumps(result, indent=1) + "\n"
    return page(result) if form == "html" else text(result)


__all__ = ["ManifestError", "audit_documents", "audit_live", "render"]
