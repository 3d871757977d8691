"""Injection into Dynamo pods: the pure function, the `inject` command and the admission
webhook over real TLS. Fixtures are shaped as the Dynamo operator renders pods."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from aiohttp import web

from agent.inject import SIDECAR, Options, inject
from agent.webhook import make_app, mutate_review, tls_context
from tests.conftest import ROOT, free_port

FIXTURES = ROOT / "tests" / "fixtures" / "k8s"
K8S_VERSION = "1.30.0"


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((FIXTURES / name).read_text()) if d]


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def sidecar_of(spec: dict[str, Any]) -> dict[str, Any]:
    return next(
        c for c in [*spec.get("initContainers", []), *spec.get("containers", [])] if c["name"] == SIDECAR
    )


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_worker_pod_gets_a_native_sidecar_that_sees_main() -> None:
    pod = load("worker_pod.yaml")[0]
    injected, notes = inject(pod)
    assert notes == []
    validate(injected)
    spec = injected["spec"]
    sidecar = sidecar_of(spec)
    assert sidecar in spec["initContainers"] and sidecar["restartPolicy"] == "Always"
    assert spec["shareProcessNamespace"] is True
    env = env_of(sidecar)
    # main's Dynamo, discovery and event-plane settings, values and valueFrom alike
    for name in (
        "DYN_SYSTEM_PORT",
        "DYN_NAMESPACE",
        "ETCD_ENDPOINTS",
        "NATS_SERVER",
        "DYN_PARENT_DGD_K8S_NAME",
    ):
        assert name in env, name
    assert env["DYN_PARENT_DGD_K8S_NAME"] == {
        "fieldRef": {"fieldPath": "metadata.labels['nvidia.com/dynamo-graph-deployment-name']"}
    }
    assert "HF_TOKEN" not in env  # secrets main needs are not the sidecar's
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["DYN_SIDECAR_ROLE"] == "worker"
    assert env["DYN_SIDECAR_TERMINATION_GRACE_PERIOD"] == "60"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["DYN_SIDECAR_GPU_ENABLED"] == "true"
    assert sidecar["ports"][0] == {"name": "sidecar-metrics", "containerPort": 9469, "protocol": "TCP"}
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert not security["allowPrivilegeEscalation"] and security["capabilities"] == {"drop": ["ALL"]}
    assert "nvidia.com/gpu" not in json.dumps(sidecar["resources"])  # sees GPUs, claims none
    main = spec["containers"][0]
    assert "/drain" in main["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert "timeout=55" in main["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert injected["metadata"]["labels"]["dynamo-sidecar.io/injected"] == "true"


def test_frontend_pod_and_options() -> None:
    pod = load("frontend_pod.yaml")[0]
    pod["metadata"]["annotations"] = {
        "dynamo-sidecar.io/image": "registry.local/dynamo-sidecar:dev",
        "dynamo-sidecar.io/memory-limit": "256Mi",
        "dynamo-sidecar.io/config.dynamo_interval": "2s",
    }
    injected, _ = inject(pod, Options(native=False))
    validate(injected)
    sidecar = sidecar_of(injected["spec"])
    assert sidecar in injected["spec"]["containers"] and "restartPolicy" not in sidecar
    assert sidecar["image"] == "registry.local/dynamo-sidecar:dev"
    assert sidecar["resources"]["limits"]["memory"] == "256Mi"
    env = env_of(sidecar)
    assert env["DYN_SIDECAR_ROLE"] == "frontend" and env["DYN_HTTP_PORT"] == "8000"
    assert env["DYN_SIDECAR_DYNAMO_INTERVAL"] == "2s"
    assert env["DYN_SIDECAR_GPU_ENABLED"] == "false" and "NVIDIA_VISIBLE_DEVICES" not in env


def test_injection_is_idempotent_and_respects_opt_out_and_other_pods() -> None:
    pod = load("worker_pod.yaml")[0]
    once, _ = inject(pod)
    twice, _ = inject(once)
    assert twice == once
    opted = json.loads(json.dumps(pod))
    opted["metadata"]["annotations"] = {"dynamo-sidecar.io/inject": "false"}
    unchanged, notes = inject(opted)
    assert unchanged == opted and "opted out" in notes[0]
    other = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "a", "image": "b"}]},
    }
    assert inject(other)[0] == other
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    assert inject(config_map)[0] is config_map


def test_deployment_template_is_injected() -> None:
    pod = load("worker_pod.yaml")[0]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "worker", "namespace": "inference"},
        "spec": {
            "selector": {"matchLabels": {"app": "w"}},
            "template": {
                "metadata": {"labels": {**pod["metadata"]["labels"], "app": "w"}},
                "spec": pod["spec"],
            },
        },
    }
    injected, _ = inject(deployment)
    validate(injected)
    assert sidecar_of(injected["spec"]["template"]["spec"])


def test_dynamo_graph_deployment_services_are_injected() -> None:
    dgd = load("dgd.yaml")[0]
    injected, notes = inject(dgd)
    services = injected["spec"]["services"]
    for name, role in (("Frontend", "frontend"), ("VllmDecodeWorker", "worker")):
        extra = services[name]["extraPodSpec"]
        sidecar = sidecar_of(extra)
        assert env_of(sidecar)["DYN_SIDECAR_ROLE"] == role
        assert extra["shareProcessNamespace"] is True
        assert "preStop" in extra["mainContainer"]["lifecycle"]
        assert services[name]["extraPodMetadata"]["labels"]["dynamo-sidecar.io/injected"] == "true"
    assert env_of(sidecar_of(services["Frontend"]["extraPodSpec"]))["DYN_ROUTER_MODE"] == "kv"  # service envs
    assert (
        env_of(sidecar_of(services["VllmDecodeWorker"]["extraPodSpec"]))["DYN_SIDECAR_GPU_ENABLED"] == "true"
    )
    assert "extraPodSpec" not in services["Planner"] or SIDECAR not in json.dumps(services["Planner"])
    assert any("Planner" in note for note in notes)
    assert inject(injected)[0] == injected


def test_inject_command_on_a_multi_document_file() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "inject", "-f", str(FIXTURES / "dgd.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in documents] == ["DynamoGraphDeployment", "ConfigMap"]
    assert documents[1] == load("dgd.yaml")[1]  # other kinds pass through unchanged
    assert SIDECAR in json.dumps(documents[0])
    assert "Planner" in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "agent.cli", "inject", "-f", "-"],
        input="a: [",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1


# --- the admission webhook -----------------------------------------------------------------


def review(obj: Any, uid: str = "7f1e") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "object": obj,
        },
    }


def patched(pod: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    response = answer["response"]
    assert response["allowed"] is True
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    return jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))


def test_review_patch_applies_to_the_injected_pod() -> None:
    pod = load("worker_pod.yaml")[0]
    answer, outcome = mutate_review(review(pod), Options())
    assert outcome == "patched" and answer["response"]["uid"] == "7f1e"
    result = patched(pod, answer)
    validate(result)
    assert result == inject(pod)[0]
    again, outcome = mutate_review(review(result), Options())
    assert outcome == "unchanged" and "patch" not in again["response"]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: cannot make a test certificate")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


async def test_webhook_over_tls(certificate, http) -> None:
    cert, key = certificate
    runner = web.AppRunner(make_app(Options()))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls_context(cert, key)).start()
    client_tls = ssl.create_default_context(cafile=cert)
    url = f"https://127.0.0.1:{port}"
    try:
        pod = load("frontend_pod.yaml")[0]
        async with http.post(url + "/mutate", json=review(pod), ssl=client_tls) as response:
            assert response.status == 200
            answer = await response.json()
        result = patched(pod, answer)
        validate(result)
        assert sidecar_of(result["spec"])
        # Malformed reviews never block a pod: allowed, with a warning, without a patch.
        for body in (
            b"{not json",
            b'{"request": 3}',
            json.dumps({"request": {"uid": "u", "object": []}}).encode(),
        ):
            async with http.post(url + "/mutate", data=body, ssl=client_tls) as response:
                assert response.status == 200
                bad = (await response.json())["response"]
            assert bad["allowed"] is True and "patch" not in bad and bad["warnings"]
        other = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x"},
            "spec": {"containers": [{"name": "a", "image": "b"}]},
        }
        async with http.post(url + "/mutate", json=review(other), ssl=client_tls) as response:
            assert "patch" not in (await response.json())["response"]
        async with http.get(url + "/metrics", ssl=client_tls) as response:
            text = await response.text()
        assert 'dynamo_sidecar_webhook_reviews_total{outcome="error"} 3.0' in text
        assert 'dynamo_sidecar_webhook_reviews_total{outcome="patched"} 1.0' in text
    finally:
        await runner.cleanup()
