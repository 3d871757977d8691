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

from agent.tools.inject import SIDECAR, Options, inject
from agent.tools.webhook import make_app, mutate_review, tls_context
from tests.helpers import ROOT, free_port

FIXTURES = ROOT / "tests" / "fixtures" / "k8s"
K8S_VERSION = "1.30.0"
IMAGE = "registry.test/dynamo-sidecar:0.1.0"
OPTIONS = Options(image=IMAGE)


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
    injected, notes = inject(pod, OPTIONS)
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
    # No readiness probe: a native sidecar's readiness is the pod's, and the operator's
    # Kubernetes discovery routes to a worker only while its pod is Ready.
    assert "readinessProbe" not in sidecar
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert not security["allowPrivilegeEscalation"] and security["capabilities"] == {"drop": ["ALL"]}
    assert "nvidia.com/gpu" not in json.dumps(sidecar["resources"])  # sees GPUs, claims none
    # A worker's hook only marks the drain's start: Dynamo's own shutdown needs the grace period.
    hook = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert "/drain?wait=false" in hook and "timeout=2" in hook
    assert injected["metadata"]["labels"]["dynamo-sidecar.io/injected"] == "true"


def test_frontend_pod_and_options() -> None:
    pod = load("frontend_pod.yaml")[0]
    pod["metadata"]["annotations"] = {
        "dynamo-sidecar.io/image": "registry.local/dynamo-sidecar:dev",
        "dynamo-sidecar.io/memory-limit": "256Mi",
        "dynamo-sidecar.io/config.dynamo_interval": "2s",
    }
    injected, _ = inject(pod, Options(image=IMAGE, native=False))
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
    once, _ = inject(pod, OPTIONS)
    twice, _ = inject(once, OPTIONS)
    assert twice == once
    opted = json.loads(json.dumps(pod))
    opted["metadata"]["annotations"] = {"dynamo-sidecar.io/inject": "false"}
    unchanged, notes = inject(opted, OPTIONS)
    assert unchanged == opted and "opted out" in notes[0]
    other = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "a", "image": "b"}]},
    }
    assert inject(other, OPTIONS)[0] == other
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    assert inject(config_map, OPTIONS)[0] is config_map


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
    injected, _ = inject(deployment, OPTIONS)
    validate(injected)
    assert sidecar_of(injected["spec"]["template"]["spec"])


def test_dynamo_graph_deployment_services_are_injected() -> None:
    dgd = load("dgd.yaml")[0]
    injected, notes = inject(dgd, OPTIONS)
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
    assert SIDECAR not in json.dumps(services["Planner"])  # the planner gets no sidecar
    assert any("Planner" in note for note in notes)
    assert inject(injected, OPTIONS)[0] == injected


def test_inject_command_on_a_multi_document_file() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "inject", "-f", str(FIXTURES / "dgd.yaml"), "--image", IMAGE],
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
        [sys.executable, "-m", "agent.cli", "inject", "-f", "-", "--image", IMAGE],
        input="a: [",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 64 and "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1


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
    answer, outcome = mutate_review(review(pod), OPTIONS)
    assert outcome == "patched" and answer["response"]["uid"] == "7f1e"
    result = patched(pod, answer)
    validate(result)
    assert result == inject(pod, OPTIONS)[0]
    again, outcome = mutate_review(review(result), OPTIONS)
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
    runner = web.AppRunner(make_app(OPTIONS))
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


def test_v1beta1_components_opt_outs_and_a_dgd_inject_cannot_read() -> None:
    from tests.crd_schema import errors

    crd = (
        ROOT / "tests" / "fixtures" / "upstream" / "dynamo" / "crd" / "nvidia.com_dynamographdeployments.yaml"
    )
    dgd: dict[str, Any] = {
        "apiVersion": "nvidia.com/v1beta1",
        "kind": "DynamoGraphDeployment",
        "metadata": {"name": "g"},
        "spec": {
            "env": [{"name": "DYN_SYSTEM_PORT", "value": "9345"}, {"name": "HF_HOME", "value": "/models"}],
            "components": [
                {"name": "Frontend", "type": "frontend"},  # the operator supplies main
                {
                    "name": "prefill",
                    "type": "prefill",
                    "podTemplate": {
                        "metadata": {"annotations": {"dynamo-sidecar.io/memory-limit": "256Mi"}},
                        "spec": {
                            "terminationGracePeriodSeconds": 120,
                            "containers": [
                                {
                                    "name": "main",
                                    "image": "w",
                                    "env": [{"name": "DYN_SYSTEM_PORT", "value": "9400"}],
                                }
                            ],
                        },
                    },
                },
                {
                    "name": "epp",
                    "type": "epp",
                    "eppConfig": {"configMapRef": {"name": "epp-config", "key": "epp.yaml"}},
                },
            ],
        },
    }
    options = Options(image="registry.example/dynamo-sidecar:test")
    out, notes = inject(dgd, options)
    assert errors(crd, out) == []
    frontend, prefill, epp = out["spec"]["components"]
    assert frontend["podTemplate"]["spec"]["containers"][0]["name"] == "main"
    assert (
        "/drain'"
        in frontend["podTemplate"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1]
    )
    sidecar = prefill["podTemplate"]["spec"]["initContainers"][0]
    env = env_of(sidecar)
    # main's own value wins over the DGD's; HF_HOME is not the sidecar's business
    assert env["DYN_SYSTEM_PORT"] == "9400" and "HF_HOME" not in env
    assert env["DYN_SIDECAR_ROLE"] == "worker" and env["DYN_SIDECAR_TERMINATION_GRACE_PERIOD"] == "120"
    assert sidecar["resources"]["limits"]["memory"] == "256Mi"
    assert prefill["podTemplate"]["metadata"]["labels"]["dynamo-sidecar.io/injected"] == "true"
    assert epp == dgd["spec"]["components"][2] and any("epp" in note for note in notes)
    # Opting out: one component's pod template, or the whole graph.
    one = json.loads(json.dumps(dgd))
    one["spec"]["components"][1]["podTemplate"]["metadata"]["annotations"]["dynamo-sidecar.io/inject"] = (
        "false"
    )
    out, notes = inject(one, options)
    assert "initContainers" not in out["spec"]["components"][1]["podTemplate"]["spec"]
    assert (
        "opted out" in " ".join(notes)
        and out["spec"]["components"][0]["podTemplate"]["spec"]["initContainers"]
    )
    whole = {
        **json.loads(json.dumps(dgd)),
        "metadata": {"name": "g", "annotations": {"dynamo-sidecar.io/inject": "false"}},
    }
    assert inject(whole, options)[0] == whole
    # A DGD inject cannot read: nothing on stdout (a pipe into kubectl must fail), exit 64.
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "inject",
            "-f",
            "-",
            "--image",
            "registry.example/dynamo-sidecar:test",
        ],
        input=yaml.safe_dump({**dgd, "spec": {"services": {"x": {"componentType": "worker"}}}}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 64 and bad.stdout == ""
    assert bad.stderr.strip() == (
        "dynamo-sidecar inject: nvidia.com/v1beta1 DynamoGraphDeployment has no spec.components list; nothing written"
    )


# --- the image is explicit, values are Kubernetes quantities, the identity is main's --------


def test_the_sidecar_runs_as_mains_user_and_group() -> None:
    pod = load("worker_pod.yaml")[0]
    default = sidecar_of(inject(pod, OPTIONS)[0]["spec"])["securityContext"]
    # Dynamo's images: uid 1000, gid 0 (see tests/test_proc_access.py for why the gid matters).
    assert (default["runAsUser"], default["runAsGroup"], default["runAsNonRoot"]) == (1000, 0, True)
    pod["spec"]["securityContext"] = {"runAsUser": 2000, "runAsGroup": 3000}
    from_pod = sidecar_of(inject(pod, OPTIONS)[0]["spec"])["securityContext"]
    assert (from_pod["runAsUser"], from_pod["runAsGroup"]) == (2000, 3000)
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": 4000, "runAsGroup": 5000}
    from_main = sidecar_of(inject(pod, OPTIONS)[0]["spec"])["securityContext"]
    assert (from_main["runAsUser"], from_main["runAsGroup"]) == (4000, 5000)
    # A root main never makes a root sidecar (runAsNonRoot would keep the pod from starting).
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": 0, "runAsGroup": 0}
    from_root = sidecar_of(inject(pod, OPTIONS)[0]["spec"])["securityContext"]
    assert (from_root["runAsUser"], from_root["runAsGroup"]) == (1000, 0)


@pytest.mark.parametrize(
    ("text", "value"),
    [("64Mi", 64 * 2**20), ("50m", 0.05), ("0.5", 0.5), ("1e3", 1000), ("1.5Gi", 1.5 * 2**30), ("2k", 2000),
     ("lots", None), ("", None), ("-1", None), ("64MB", None), ("1.2.3", None), ("Mi", None), ("9" * 80, None)],
)  # fmt: skip
def test_quantities_parse_as_kubernetes_does(text: str, value: float | None) -> None:
    from agent.tools.inject import parse_quantity

    parsed = parse_quantity(text)
    assert (float(parsed) if parsed is not None else None) == value


def test_a_bad_annotation_leaves_the_pod_alone_with_one_line() -> None:
    from agent.tools.inject import InjectError

    pod = load("worker_pod.yaml")[0]
    pod["metadata"]["annotations"] = {"dynamo-sidecar.io/memory-limit": "lots"}
    with pytest.raises(InjectError, match=r"memory limit 'lots' is not a positive Kubernetes quantity"):
        inject(pod, OPTIONS)
    pod["metadata"]["annotations"] = {"dynamo-sidecar.io/image": "Not An Image"}
    with pytest.raises(InjectError, match=r"annotation dynamo-sidecar.io/image"):
        inject(pod, OPTIONS)
    # The webhook answers such a pod allowed and unpatched, with the reason as a warning.
    answer, outcome = mutate_review(review(pod), OPTIONS)
    assert outcome == "error" and "patch" not in answer["response"]
    assert "dynamo-sidecar.io/image" in answer["response"]["warnings"][0]


def _inject_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("DYN_")}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "inject", "-f", str(FIXTURES / "worker_pod.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
    )


def test_inject_writes_only_an_image_someone_configured() -> None:
    bare = _inject_cli()
    assert bare.returncode == 64 and bare.stdout == "" and "ghcr.io" not in bare.stderr
    assert len(bare.stderr.splitlines()) == 1
    assert "no sidecar image given: pass --image" in bare.stderr and "DYN_SIDECAR_IMAGE" in bare.stderr
    from_env = _inject_cli(env={"DYN_SIDECAR_IMAGE": "registry.test/from-env:1"})
    assert from_env.returncode == 0, from_env.stderr
    assert sidecar_of(yaml.safe_load(from_env.stdout)["spec"])["image"] == "registry.test/from-env:1"
    flag = _inject_cli(
        "--image", "registry.test/flag:2", env={"DYN_SIDECAR_IMAGE": "registry.test/from-env:1"}
    )
    assert sidecar_of(yaml.safe_load(flag.stdout)["spec"])["image"] == "registry.test/flag:2"
    digest = "registry.test:5000/team/dynamo-sidecar@sha256:" + "a" * 64
    assert _inject_cli("--image", digest).returncode == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--image", ""], ("'--image'", "an image reference")),
        (["--image", "Bad Image"], ("'--image'", "an image reference")),
        ([], ("'DYN_SIDECAR_IMAGE'", "an image reference")),  # set but empty
        (["--image", IMAGE, "--sidecar-memory-limit", "lots"], ("--sidecar-memory-limit", "'lots'", "160Mi")),
        (["--image", IMAGE, "--sidecar-cpu-request", "fast"], ("--sidecar-cpu-request", "50m")),
        (["--image", IMAGE, "--sidecar-memory-request", "0"], ("--sidecar-memory-request", "positive")),
        (["--image", IMAGE, "--sidecar-memory-request", "1Gi"], ("--sidecar-memory-request", "at most the memory limit")),
    ],
    ids=["empty", "spaces", "empty-env", "memory-lots", "cpu-word", "zero", "request-over-limit"],
)  # fmt: skip
def test_bad_image_or_quantity_is_one_line_and_exit_64(args: list[str], words: tuple[str, ...]) -> None:
    result = _inject_cli(*args, env={"DYN_SIDECAR_IMAGE": ""} if not args else None)
    assert result.returncode == 64 and result.stdout == "", result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
