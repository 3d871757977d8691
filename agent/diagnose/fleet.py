"""Fleet scope: the same rules, evaluated over PromQL against every pod's sidecar metrics, to
answer step one of the root-cause flow: is the symptom on one pod, one node, or everywhere?

Each rule that can be judged from metrics alone declares its PromQL in its own record
(agent/diagnose/rules/), beside the pod predicate and over the same thresholds.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.core import metrics as m
from agent.core.exitcodes import BY_STATUS
from agent.diagnose.engine import RULES
from agent.diagnose.model import SEVERITY_RANK, report_status


def selector(namespace: str = "") -> Callable[..., str]:
    def sel(metric: str, matchers: str = "") -> str:
        parts = [m for m in (matchers, f'namespace="{namespace}"' if namespace else "") if m]
        return f"{metric}{{{','.join(parts)}}}"

    return sel


def fleet_queries(namespace: str = "", overrides: dict[str, float] | None = None) -> dict[str, str]:
    """rule id -> PromQL returning one series per affected pod (and subject), from each rule
    record's own fleet query and thresholds: the same numbers the pod predicate uses."""
    sel = selector(namespace)
    return {rule.id: rule.fleet(sel, rule.limits(overrides)) for rule in RULES if rule.fleet is not None}


@dataclass
class PodRef:
    pod: str
    node: str
    namespace: str

    @staticmethod
    def of(labels: dict[str, str]) -> PodRef:
        return PodRef(
            labels.get("pod") or labels.get("kubernetes_pod_name") or labels.get("instance", "?"),
            labels.get("node") or labels.get("kubernetes_node") or labels.get("nodename") or "",
            labels.get("namespace") or labels.get("kubernetes_namespace") or "",
        )


class PrometheusError(Exception):
    pass


def query(base_url: str, promql: str, timeout: float) -> list[dict[str, Any]]:
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise PrometheusError(f"HTTP {exc.code} for {promql!r}: {exc.read()[:200]!r}") from None
    except (OSError, ValueError) as exc:
        raise PrometheusError(f"cannot query {base_url}: {exc}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{promql!r}: {body.get('error')}")
    return body["data"]["result"]


def scope_of(affected: list[PodRef], fleet: list[PodRef]) -> str:
    pods = {p.pod for p in affected}
    nodes = {p.node for p in affected if p.node}
    fleet_pods = {p.pod for p in fleet} or pods
    fleet_nodes = {p.node for p in fleet if p.node}
    if len(fleet_pods) > 1 and pods >= fleet_pods:
        return f"everywhere: all {len(fleet_pods)} pods"
    if len(pods) == 1:
        only = next(iter(affected))
        return f"one pod: {only.namespace + '/' if only.namespace else ''}{only.pod}" + (
            f" on node {only.node}" if only.node else ""
        )
    if len(nodes) == 1 and len(fleet_nodes) > 1:
        node = next(iter(nodes))
        on_node = {p.pod for p in fleet if p.node == node}
        share = "all" if pods >= on_node else f"{len(pods)} of {len(on_node)}"
        return f"one node: {node} ({share} pods there)"
    return f"{len(pods)} of {len(fleet_pods)} pods on {len(nodes) or '?'} nodes"


def evaluate_fleet(
    base_url: str, namespace: str = "", timeout: float = 10.0, overrides: dict[str, float] | None = None
) -> dict[str, Any]:
    """Every rule's fleet query, with the deployment's threshold overrides (the same the pods
    and the alerts use). PrometheusError when Prometheus cannot be asked at all; a query that
    fails alone is listed under `unread` and the report is not "ok" for it."""
    sel = selector(namespace)
    fleet = [
        PodRef.of(r["metric"])
        for r in query(
            base_url, f"max by (pod, node, namespace, instance) ({sel(m.BUILD_INFO.name)})", timeout
        )
    ]
    rules = {rule.id: rule for rule in RULES}
    findings: list[dict[str, Any]] = []
    unread: list[dict[str, str]] = []
    if not fleet:
        where = f" in namespace {namespace}" if namespace else ""
        unread.append({"source": m.BUILD_INFO.name, "error": f"no sidecar's metrics in Prometheus{where}"})
    for rule_id, promql in fleet_queries(namespace, overrides).items():
        rule = rules[rule_id]
        try:
            result = query(base_url, promql, timeout)
        except PrometheusError as exc:
            unread.append({"source": f"rule {rule_id}", "error": str(exc)[:300]})
            continue
        if not result:
            continue
        affected = [PodRef.of(r["metric"]) for r in result]
        unique = {(p.namespace, p.pod): p for p in affected}
        findings.append(
            {
                "rule": rule.id,
                "category": rule.category.value,
                "severity": rule.severity.value,
                "scope": scope_of(list(unique.values()), fleet),
                "pods": sorted(f"{p.namespace + '/' if p.namespace else ''}{p.pod}" for p in unique.values()),
                "nodes": sorted({p.node for p in unique.values() if p.node}),
                "series": [{"labels": r["metric"], "value": r["value"][1]} for r in result[:20]],
                "actions": list(rule.actions),
                "promql": promql,
            }
        )
    findings.sort(key=lambda f: (-SEVERITY_RANK[f["severity"]], -len(f["pods"])))
    return {
        "version": 1,
        "scope": "fleet",
        "prometheus": base_url,
        "namespace": namespace or None,
        "status": report_status([f["severity"] for f in findings], bool(unread)),
        "sidecars": len({(p.namespace, p.pod) for p in fleet}),
        "nodes": sorted({p.node for p in fleet if p.node}),
        "findings": findings,
        "unread": unread,
        "thresholds": dict(sorted((overrides or {}).items())),
    }


def text(report: dict[str, Any]) -> str:
    lines = [
        f"dynamo-sidecar fleet diagnose: {report['status'].upper()}  ({report['sidecars']} sidecars on "
        f"{len(report['nodes']) or '?'} nodes, {len(report['findings'])} findings, from {report['prometheus']})",
        "",
    ]
    for missing in report.get("unread", []):
        lines.append(f"NOT READ: {missing['source']}: {missing['error']}")
    if report.get("unread"):
        lines.append("")
    if not report["findings"]:
        lines.append(
            "No findings across the fleet."
            if not report.get("unread")
            else "No findings in what could be read."
        )
    for finding in report["findings"]:
        lines.append(
            f"[{finding['severity'].upper()}] {finding['rule']} ({finding['category']}): {finding['scope']}"
        )
        lines.append(
            f"  pods: {', '.join(finding['pods'][:10])}{' ...' if len(finding['pods']) > 10 else ''}"
        )
        if finding["actions"]:
            lines.append(f"  action: {finding['actions'][0]}")
        lines.append(f"  query: {finding['promql']}")
        lines.append("")
    return "\n".join(lines) + "\n"


def run_fleet(
    base_url: str, namespace: str, fmt: str, timeout: float, overrides: dict[str, float] | None = None
) -> int:
    import sys

    try:
        report = evaluate_fleet(base_url, namespace, timeout, overrides)
    except PrometheusError as exc:
        print(f"dynamo-sidecar diagnose: could not read Prometheus: {exc}", file=sys.stderr)
        return BY_STATUS["unknown"]
    print(json.dumps(report, indent=1) + "\n" if fmt == "json" else text(report), end="")
    return BY_STATUS[report["status"]]
