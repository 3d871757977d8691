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
from tests.conftest import ROOT

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


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart rendered with `values`, plus image.repository when they do not set one."""
    if "repository" not in values.get("image", {}):
        values = {**values, "image": {**values.get("image", {}), "repository": REPOSITORY}}
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
    assert config["namespaceSelector"] == {"matchLabels": {"dynamo-sidecar.io/inject": "enabled"}}
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
