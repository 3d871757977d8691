"""The Helm chart, rendered by Helm's own Go SDK (helm-python-sdk: `helm template` and
`helm lint` without a binary or a cluster), validated against Kubernetes 1.30 schemas."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.diagnose.alerts import alert_rules
from tests.helpers import ROOT

CHART = ROOT / "packaging" / "helm" / "dynamo-sidecar"
helm = pytest.importorskip(
    "helm_python", reason="helm-python-sdk is not installed (it is in the [test] extra)"
)
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed"
)

CRDS = {"PodMonitor", "PrometheusRule", "Certificate", "Issuer"}
NON_DEFAULT = {
    "image": {"repository": "registry.local/dynamo-sidecar", "tag": "dev"},
    "webhook": {"replicas": 1, "failurePolicy": "Ignore"},
    "sidecar": {
        "native": False,
        "config": {"slo_ttft_p99": "500ms"},
        "resources": {"limits": {"memory": "256Mi"}},
    },
    "tls": {"certManager": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}},
    "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "grafanaDashboard": {"enabled": False},
}


# No image is published: every install names one (the schema requires image.repository).
REPOSITORY = "registry.test/dynamo-sidecar"


def with_repository(values: dict[str, Any]) -> dict[str, Any]:
    """`values` plus image.repository when they do not set one (the chart requires it)."""
    if "repository" not in values.get("image", {}):
        values = {**values, "image": {**values.get("image", {}), "repository": REPOSITORY}}
    return values


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart rendered with `values`, plus image.repository when they do not set one."""
    values = with_repository(values)
    chart = helm.Chart.load(str(CHART))
    try:
        files = chart.render(values, name="ds", namespace="dynamo-system")
    finally:
        chart.close()
    documents = []
    for path, text in sorted(files.items()):
        if path.endswith(".txt"):
            continue
        documents += [d for d in yaml.safe_load_all(text) if d]
    return documents


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def test_lint_is_clean() -> None:
    values = {"image": {"repository": REPOSITORY}}
    report = helm.lint(str(CHART), values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_an_install_without_an_image_repository_says_what_to_set() -> None:
    """No image is published, so none is defaulted: the schema refuses an install that names none."""
    chart = helm.Chart.load(str(CHART))
    try:
        for values, message in [
            ({}, "at '/image': missing property 'repository'"),
            ({"image": {"repository": ""}}, "at '/image/repository': minLength"),
            ({"image": {"repository": "registry.test/dynamo-sidecar:0.1.0"}}, "does not match pattern"),
        ]:
            with pytest.raises(helm.HelmValuesError) as refused:
                chart.render(values, name="ds", namespace="dynamo-system")
            assert message in str(refused.value), str(refused.value)
    finally:
        chart.close()
    # The defaults name no image at all (the one once there was never published).
    assert "repository" not in yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    assert "ghcr.io" not in (CHART / "values.yaml").read_text()


@pytest.mark.parametrize("values", [{}, NON_DEFAULT], ids=["defaults", "non-default"])
def test_every_manifest_validates(values: dict[str, Any]) -> None:
    documents = render(values)
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "Service", "MutatingWebhookConfiguration", "PodMonitor", "PrometheusRule"} <= kinds
    for document in documents:
        if document["kind"] in CRDS:
            continue  # no bundled schema: checked by hand below
        kubernetes_validate.validate(document, "1.30.0", strict=True)


def test_webhook_configuration_never_blocks_and_selects_dynamo_pods() -> None:
    documents = render({})
    config = by_kind(documents, "MutatingWebhookConfiguration")[0]["webhooks"][0]
    assert config["failurePolicy"] == "Ignore" and config["sideEffects"] == "None"
    assert config["reinvocationPolicy"] == "IfNeeded" and config["admissionReviewVersions"] == ["v1"]
    selector = config["objectSelector"]["matchExpressions"][0]
    assert selector["key"] == "nvidia.com/dynamo-component-type" and "worker" in selector["values"]
    assert config["namespaceSelector"]["matchLabels"] == {"dynamo-sidecar.io/inject": "enabled"}
    assert config["clientConfig"]["service"]["path"] == "/mutate"
    deployment = by_kind(documents, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 2 and by_kind(documents, "PodDisruptionBudget")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "webhook" and "--tls-cert-file=/tls/tls.crt" in args


def test_generated_certificate_is_signed_by_the_ca_bundle(tmp_path: Path) -> None:
    import base64

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    documents = render({})
    secret = by_kind(documents, "Secret")[0]["data"]
    ca_bundle = by_kind(documents, "MutatingWebhookConfiguration")[0]["webhooks"][0]["clientConfig"][
        "caBundle"
    ]
    (tmp_path / "ca.crt").write_bytes(base64.b64decode(ca_bundle))
    (tmp_path / "tls.crt").write_bytes(base64.b64decode(secret["tls.crt"]))
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    names = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(tmp_path / "tls.crt")],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "ds-dynamo-sidecar.dynamo-system.svc" in names


def test_non_default_values_take_effect() -> None:
    documents = render(NON_DEFAULT)
    assert not by_kind(documents, "PodDisruptionBudget")  # one replica: a PDB would block drains
    assert not by_kind(documents, "Secret") and by_kind(documents, "Certificate")
    assert not by_kind(documents, "Issuer")  # the given ClusterIssuer is used
    assert by_kind(documents, "Certificate")[0]["spec"]["issuerRef"]["name"] == "corp-ca"
    webhook = by_kind(documents, "MutatingWebhookConfiguration")[0]
    assert (
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        == "dynamo-system/ds-dynamo-sidecar"
    )
    args = by_kind(documents, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--image=registry.local/dynamo-sidecar:dev" in args and "--regular-container" in args
    assert "--sidecar-config=slo_ttft_p99=500ms" in args and "--sidecar-memory-limit=256Mi" in args
    assert by_kind(documents, "PodMonitor")[0]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert not [d for d in by_kind(documents, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]


def test_values_schema_rejects_a_bad_value() -> None:
    with pytest.raises(Exception, match=r"failurePolicy|schema|values"):
        render({"webhook": {"failurePolicy": "Sometimes"}})


def test_pod_monitor_and_prometheus_rule_are_complete() -> None:
    documents = render({})
    monitor = by_kind(documents, "PodMonitor")[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "sidecar-metrics" and endpoint["path"] == "/metrics"
    assert monitor["spec"]["selector"] == {"matchLabels": {"dynamo-sidecar.io/injected": "true"}}
    rule = by_kind(documents, "PrometheusRule")[0]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules = rule["spec"]["groups"][0]["rules"]
    assert rules == alert_rules()  # one source: the diagnose rule records
    dashboard = next(
        d for d in by_kind(documents, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert '"panels"' in dashboard["data"]["dynamo-sidecar.json"]


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
)
def test_prometheus_rule_group_passes_promtool(tmp_path: Path) -> None:
    rule = by_kind(render({}), "PrometheusRule")[0]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- knobs, selectors, certificates across upgrades, the webhook's monitoring ---------------

KNOBS: dict[str, Any] = {
    "webhook": {
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/owner": "platform"},
        # A podLabels key that the selector owns does not win over it.
        "podLabels": {"team": "inference", "app.kubernetes.io/component": "mine"},
        "hostNetwork": True,
        "port": 10443,
        "metricsPort": 10470,
        "maxConnections": 512,
        "topologySpreadConstraints": [
            {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}
        ],
        "namespaceSelector": {
            "matchExpressions": [{"key": "team", "operator": "In", "values": ["inference"]}]
        },
    },
    "serviceAccount": {"name": "webhook-sa", "annotations": {"eks.amazonaws.com/role-arn": "arn:x"}},
    "sidecar": {
        "config": {
            "log_files": "/var/log/dynamo #1.jsonl",  # '#' would start a YAML comment unquoted
            "frontend_url": "http://frontend: 8000",  # ': ' would make a YAML mapping
            "canary_failures": 3,
        }
    },
}


def pod_spec(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(documents, "Deployment")[0]["spec"]["template"]["spec"]


def test_knobs_take_effect_and_validate() -> None:
    documents = render(KNOBS)
    for document in documents:
        if document["kind"] not in CRDS:
            kubernetes_validate.validate(document, "1.30.0", strict=True)
    template = by_kind(documents, "Deployment")[0]["spec"]["template"]
    spec = template["spec"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert template["metadata"]["annotations"] == {"example.com/owner": "platform"}
    assert template["metadata"]["labels"]["team"] == "inference"
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "webhook"
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["topologySpreadConstraints"] == KNOBS["webhook"]["topologySpreadConstraints"]
    assert spec["serviceAccountName"] == "webhook-sa" and spec["automountServiceAccountToken"] is False
    account = by_kind(documents, "ServiceAccount")[0]
    assert account["metadata"]["name"] == "webhook-sa"
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:x"}
    container = spec["containers"][0]
    assert {"--listen-port=10443", "--metrics-port=10470", "--max-connections=512"} <= set(container["args"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"https": 10443, "metrics": 10470}
    # Config values reach the webhook exactly, as one argument each.
    assert "--sidecar-config=log_files=/var/log/dynamo #1.jsonl" in container["args"]
    assert "--sidecar-config=frontend_url=http://frontend: 8000" in container["args"]
    assert "--sidecar-config=canary_failures=3" in container["args"]
    # The namespace selector given replaces the default whole.
    webhook = by_kind(documents, "MutatingWebhookConfiguration")[0]["webhooks"][0]
    assert webhook["namespaceSelector"] == KNOBS["webhook"]["namespaceSelector"]


def test_defaults_spread_the_replicas_and_exclude_system_namespaces() -> None:
    documents = render({})
    spec = pod_spec(documents)
    spread = spec["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    selector = by_kind(documents, "Deployment")[0]["spec"]["selector"]["matchLabels"]
    assert all(
        c["labelSelector"]["matchLabels"] == selector and c["whenUnsatisfiable"] == "ScheduleAnyway"
        for c in spread
    )
    assert "hostNetwork" not in spec and "priorityClassName" not in spec
    assert spec["serviceAccountName"] == "ds-dynamo-sidecar" and by_kind(documents, "ServiceAccount")
    webhook = by_kind(documents, "MutatingWebhookConfiguration")[0]["webhooks"][0]
    assert webhook["namespaceSelector"] == {
        "matchLabels": {"dynamo-sidecar.io/inject": "enabled"},
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-system", "kube-public", "kube-node-lease"],
            }
        ],
    }
    # The certificate is reloaded by the webhook: nothing restarts it when the Secret changes.
    assert "annotations" not in by_kind(documents, "Deployment")[0]["spec"]["template"]["metadata"]
    account = render({"serviceAccount": {"create": False}})
    assert not by_kind(account, "ServiceAccount") and pod_spec(account)["serviceAccountName"] == "default"


def test_the_webhook_is_scraped_on_its_metrics_port() -> None:
    documents = render({})
    monitor = next(d for d in by_kind(documents, "PodMonitor") if d["metadata"]["name"].endswith("-webhook"))
    deployment = by_kind(documents, "Deployment")[0]
    assert monitor["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": "ds-dynamo-sidecar-webhook"}]
    assert "metrics" in {p["name"] for p in pod_spec(documents)["containers"][0]["ports"]}
    off = render({"podMonitor": {"webhook": False}})
    assert [d["metadata"]["name"] for d in by_kind(off, "PodMonitor")] == ["ds-dynamo-sidecar"]


# A Kubernetes API server is not installable here: this one answers what Helm's `lookup`
# asks (discovery of v1, then GET of one Secret), from a Secret a previous render made.
class FakeApiServer:
    def __init__(self, secrets: dict[str, dict[str, Any]]) -> None:
        self.secrets = secrets
        self.asked: list[str] = []

    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        self.asked.append(f"{request.method} {request.path}")
        if request.path == "/api/v1":
            return web.json_response(
                {
                    "kind": "APIResourceList",
                    "groupVersion": "v1",
                    "resources": [
                        {
                            "name": "secrets",
                            "singularName": "secret",
                            "namespaced": True,
                            "kind": "Secret",
                            "verbs": ["get"],
                        }
                    ],
                }
            )
        prefix = "/api/v1/namespaces/dynamo-system/secrets/"
        if request.path.startswith(prefix) and request.path[len(prefix) :] in self.secrets:
            return web.json_response(self.secrets[request.path[len(prefix) :]])
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": "NotFound",
            "code": 404,
        }
        return web.json_response(status, status=404)


async def render_against(api: FakeApiServer, values: dict[str, Any]) -> list[dict[str, Any]]:
    """`helm upgrade`'s render: cluster-aware, so `lookup` asks the (fake) API server."""
    import asyncio

    values = with_repository(values)

    from aiohttp import web

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    kubeconfig = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [
                {"name": "c", "context": {"cluster": "fake", "user": "u", "namespace": "dynamo-system"}}
            ],
            "current-context": "c",
        }
    )

    def upgrade_render() -> dict[str, str]:
        chart = helm.Chart.load(str(CHART))
        try:
            with helm.Config(kubeconfig_content=kubeconfig, namespace="dynamo-system") as config:
                return config.render(chart, values, name="ds", namespace="dynamo-system", is_upgrade=True)
        finally:
            chart.close()

    try:
        files = await asyncio.to_thread(upgrade_render)
    finally:
        await runner.cleanup()
    return [
        d
        for path, text in sorted(files.items())
        if not path.endswith(".txt")
        for d in yaml.safe_load_all(text)
        if d
    ]


def _ca_bundle(documents: list[dict[str, Any]]) -> str:
    import base64

    webhook = by_kind(documents, "MutatingWebhookConfiguration")[0]["webhooks"][0]
    return base64.b64decode(webhook["clientConfig"]["caBundle"]).decode()


async def test_an_upgrade_reuses_the_certificate_a_previous_install_made() -> None:
    import base64

    installed = render({})  # the first install: no Secret yet, a new CA and certificate
    secret = by_kind(installed, "Secret")[0]
    api = FakeApiServer({secret["metadata"]["name"]: secret})
    upgraded = await render_against(api, {})
    assert f"GET /api/v1/namespaces/dynamo-system/secrets/{secret['metadata']['name']}" in api.asked
    assert by_kind(upgraded, "Secret")[0]["data"] == secret["data"]  # no rotation, no drift
    assert _ca_bundle(upgraded) == base64.b64decode(secret["data"]["ca.crt"]).decode()
    # Asked to recreate: a new pair, and the configuration trusts the new CA and the old one
    # until the replicas have reloaded the new certificate.
    recreated = await render_against(api, {"tls": {"recreate": True}})
    data = by_kind(recreated, "Secret")[0]["data"]
    assert data["tls.crt"] != secret["data"]["tls.crt"] and data["ca.crt"] != secret["data"]["ca.crt"]
    bundle = _ca_bundle(recreated)
    assert bundle.count("BEGIN CERTIFICATE") == 2
    assert base64.b64decode(data["ca.crt"]).decode() in bundle
    assert base64.b64decode(secret["data"]["ca.crt"]).decode() in bundle
    # A Secret missing a key (edited by hand) is not reused.
    partial = {**secret, "data": {k: v for k, v in secret["data"].items() if k != "ca.crt"}}
    fresh = await render_against(FakeApiServer({secret["metadata"]["name"]: partial}), {})
    assert by_kind(fresh, "Secret")[0]["data"]["tls.crt"] != secret["data"]["tls.crt"]
    assert _ca_bundle(fresh).count("BEGIN CERTIFICATE") == 1


def _webhook_rules(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rule = by_kind(render(values or {}), "PrometheusRule")[0]
    group = next(g for g in rule["spec"]["groups"] if g["name"] == "dynamo-sidecar-webhook")
    return group["rules"]


def test_webhook_alerts_can_be_turned_off() -> None:
    rule = by_kind(render({"prometheusRule": {"webhookAlerts": False}}), "PrometheusRule")[0]
    assert [g["name"] for g in rule["spec"]["groups"]] != [] and all(
        g["name"] != "dynamo-sidecar-webhook" for g in rule["spec"]["groups"]
    )
    names = {r["alert"] for r in _webhook_rules()}
    assert names == {
        "DynamoSidecarWebhookDown",
        "DynamoSidecarWebhookAdmissionErrors",
        "DynamoSidecarWebhookSlowReviews",
        "DynamoSidecarWebhookCertificateExpiring",
        "DynamoSidecarWebhookCertificateNotReloaded",
        "DynamoPodWithoutSidecar",
    }


WEBHOOK = 'job="ds-dynamo-sidecar-webhook",namespace="dynamo-system"'
ALERT_TESTS: list[dict[str, Any]] = [
    {   # no replica up for 5 minutes
        "interval": "1m",
        "input_series": [
            {"series": f'up{{{WEBHOOK},pod="w-1"}}', "values": "1 1 1 0x12"},
            {"series": f'up{{{WEBHOOK},pod="w-2"}}', "values": "1 1 1 0x12"},
        ],
        "alert_rule_test": [
            {"eval_time": "7m", "alertname": "DynamoSidecarWebhookDown", "exp_alerts": []},
            {"eval_time": "9m", "alertname": "DynamoSidecarWebhookDown", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "job": "ds-dynamo-sidecar-webhook", "namespace": "dynamo-system"}}]},
        ],
    },
    {   # one review admitted without a patch is enough; patched ones never fire it
        "interval": "1m",
        "input_series": [
            {"series": f'dynamo_sidecar_webhook_reviews_total{{{WEBHOOK},pod="w-1",outcome="patched"}}', "values": "0+10x20"},
            {"series": f'dynamo_sidecar_webhook_reviews_total{{{WEBHOOK},pod="w-1",outcome="timeout"}}', "values": "0x5 1x15"},
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "DynamoSidecarWebhookAdmissionErrors", "exp_alerts": []},
            {"eval_time": "8m", "alertname": "DynamoSidecarWebhookAdmissionErrors", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "namespace": "dynamo-system", "outcome": "timeout"}}]},
        ],
    },
    {   # p99 just under half the 5 s timeout: quiet
        "interval": "1m",
        "input_series": [
            {"series": f'dynamo_sidecar_webhook_review_duration_seconds_bucket{{{WEBHOOK},pod="w-1",le="1.0"}}', "values": "0x30"},
            {"series": f'dynamo_sidecar_webhook_review_duration_seconds_bucket{{{WEBHOOK},pod="w-1",le="2.5"}}', "values": "0+10x30"},
            {"series": f'dynamo_sidecar_webhook_review_duration_seconds_bucket{{{WEBHOOK},pod="w-1",le="+Inf"}}', "values": "0+10x30"},
        ],
        "alert_rule_test": [{"eval_time": "25m", "alertname": "DynamoSidecarWebhookSlowReviews", "exp_alerts": []}],
    },
    {   # p99 past it, for 10 minutes
        "interval": "1m",
        "input_series": [
            {"series": f'dynamo_sidecar_webhook_review_duration_seconds_bucket{{{WEBHOOK},pod="w-1",le="2.5"}}', "values": "0x30"},
            {"series": f'dynamo_sidecar_webhook_review_duration_seconds_bucket{{{WEBHOOK},pod="w-1",le="5.0"}}', "values": "0+10x30"},
            {"series": f'dynamo_sidecar_webhook_review_duration_seconds_bucket{{{WEBHOOK},pod="w-1",le="+Inf"}}', "values": "0+10x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "8m", "alertname": "DynamoSidecarWebhookSlowReviews", "exp_alerts": []},
            {"eval_time": "14m", "alertname": "DynamoSidecarWebhookSlowReviews", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "namespace": "dynamo-system"}}]},
        ],
    },
    {   # expiry: 14 days and an hour away (quiet), 14 days less a minute (warning after 10 m),
        # less than a day (critical at once). promtool's clock starts at 0.
        "interval": "1m",
        "input_series": [
            {"series": f'dynamo_sidecar_webhook_certificate_expiry_timestamp_seconds{{{WEBHOOK},pod="w-1"}}', "values": f"{14 * 86400 + 3600}x30"},
        ],
        "alert_rule_test": [{"eval_time": "30m", "alertname": "DynamoSidecarWebhookCertificateExpiring", "exp_alerts": []}],
    },
    {
        "interval": "1m",
        "input_series": [
            {"series": f'dynamo_sidecar_webhook_certificate_expiry_timestamp_seconds{{{WEBHOOK},pod="w-1"}}', "values": f"{14 * 86400 - 60}x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "DynamoSidecarWebhookCertificateExpiring", "exp_alerts": []},
            {"eval_time": "15m", "alertname": "DynamoSidecarWebhookCertificateExpiring", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "namespace": "dynamo-system"}}]},
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            {"series": f'dynamo_sidecar_webhook_certificate_expiry_timestamp_seconds{{{WEBHOOK},pod="w-1"}}', "values": f"{86400 - 600}x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "DynamoSidecarWebhookCertificateExpiring", "exp_alerts": [
                {"exp_labels": {"severity": "critical", "namespace": "dynamo-system"}}]},
            {"eval_time": "15m", "alertname": "DynamoSidecarWebhookCertificateExpiring", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "namespace": "dynamo-system"}},
                {"exp_labels": {"severity": "critical", "namespace": "dynamo-system"}}]},
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            {"series": f'dynamo_sidecar_webhook_certificate_reload_errors_total{{{WEBHOOK},pod="w-1"}}', "values": "0x5 1x10"},
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "DynamoSidecarWebhookCertificateNotReloaded", "exp_alerts": []},
            {"eval_time": "7m", "alertname": "DynamoSidecarWebhookCertificateNotReloaded", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "job": "ds-dynamo-sidecar-webhook", "namespace": "dynamo-system", "pod": "w-1"}}]},
        ],
    },
    {   # kube-state-metrics' view: only the bare worker in the opted-in namespace, once running 10 m
        "interval": "1m",
        "input_series": [
            {"series": 'kube_namespace_labels{namespace="llm",label_dynamo_sidecar_io_inject="enabled"}', "values": "1x20"},
            {"series": 'kube_namespace_labels{namespace="other"}', "values": "1x20"},
            *[
                {"series": f'kube_pod_labels{{namespace="{ns}",pod="{pod}",label_nvidia_com_dynamo_component_type="{kind}"{extra}}}', "values": "1x20"}
                for ns, pod, kind, extra in [
                    ("llm", "worker-injected", "worker", ""),
                    ("llm", "frontend-regular", "frontend", ""),
                    ("llm", "worker-bare", "worker", ""),
                    ("llm", "worker-optout", "worker", ',label_dynamo_sidecar_io_inject="false"'),
                    ("llm", "decode-optout", "decode", ""),
                    ("llm", "worker-pending", "worker", ""),
                    ("llm", "planner-0", "planner", ""),
                    ("other", "worker-elsewhere", "worker", ""),
                ]
            ],
            {"series": 'kube_pod_init_container_info{namespace="llm",pod="worker-injected",container="dynamo-sidecar",image="x"}', "values": "1x20"},
            {"series": 'kube_pod_container_info{namespace="llm",pod="frontend-regular",container="dynamo-sidecar",image="x"}', "values": "1x20"},
            {"series": 'kube_pod_annotations{namespace="llm",pod="decode-optout",annotation_dynamo_sidecar_io_inject="false"}', "values": "1x20"},
            *[
                {"series": f'kube_pod_status_phase{{namespace="{ns}",pod="{pod}",phase="Running"}}', "values": "1x20"}
                for ns, pod in [("llm", "worker-injected"), ("llm", "frontend-regular"), ("llm", "worker-bare"),
                                ("llm", "worker-optout"), ("llm", "decode-optout"), ("llm", "planner-0"),
                                ("other", "worker-elsewhere")]
            ],
            {"series": 'kube_pod_status_phase{namespace="llm",pod="worker-pending",phase="Running"}', "values": "0x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "9m", "alertname": "DynamoPodWithoutSidecar", "exp_alerts": []},
            {"eval_time": "11m", "alertname": "DynamoPodWithoutSidecar", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "namespace": "llm", "pod": "worker-bare"}}]},
        ],
    },
]  # fmt: skip


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
)
def test_webhook_alerts_fire_at_and_past_their_thresholds(tmp_path: Path) -> None:
    # The expressions are under test; annotations are checked by `promtool check rules` above.
    rules = [{k: v for k, v in rule.items() if k != "annotations"} for rule in _webhook_rules()]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "webhook", "rules": rules}]}))
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": ALERT_TESTS})
    )
    result = subprocess.run(
        ["promtool", "test", "rules", "test.yaml"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
